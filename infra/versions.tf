terraform {
  # 1.11: write-only arguments (the signing secret's secret_data_wo, main.tf).
  required_version = ">= 1.11"

  required_providers {
    google = {
      source = "hashicorp/google"
      # The version the infra was audited against; any later 7.x. Its exact build is in
      # .terraform.lock.hcl, written by the first `make deploy` (commit it).
      version = "~> 7.45"
    }
    random = {
      source  = "hashicorp/random"
      version = ">= 3.5"
    }
    archive = {
      source = "hashicorp/archive"
      # 2.5: glob patterns in archive_file's `excludes`.
      version = ">= 2.5"
    }
    time = {
      source = "hashicorp/time"
      # time_sleep: IAM grants settle before the functions build (iam.tf).
      version = ">= 0.9"
    }
  }

  # State is local (infra/terraform.tfstate, git-ignored). It holds a generated signing
  # secret (random_id); a given one is write-only and is not kept. A team should keep the
  # state in a versioned, private bucket: the `backend "gcs"` in infra/README.md.
}

provider "google" {
  project = var.project_id
  region  = var.region

  default_labels = var.labels
}
