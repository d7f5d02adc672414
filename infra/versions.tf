terraform {
  # 1.5: `check` blocks (see functions.tf) and optional() object attributes with defaults.
  required_version = ">= 1.5"

  required_providers {
    google = {
      source = "hashicorp/google"
      # 5.26: build_config.service_account on google_cloudfunctions2_function.
      version = ">= 5.26, < 8.0"
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
  }

  # State is local (infra/terraform.tfstate, git-ignored) and holds the signing secret.
  # A team should keep it in a bucket instead: add `backend "gcs" { bucket = "..." }` here.
}

provider "google" {
  project = var.project_id
  region  = var.region

  default_labels = var.labels
}
