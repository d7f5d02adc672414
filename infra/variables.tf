variable "project_id" {
  type        = string
  description = "Google Cloud project to deploy into (its id, not its number)."

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a project id: 6-30 lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "region" {
  type        = string
  description = "Region of the functions, the scheduler job and the source bucket, e.g. europe-west1."

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "region must be a Google Cloud region such as europe-west1 or us-central1."
  }
}

variable "namespace" {
  type        = string
  description = "Prefix of the Firestore collections ({namespace}_schedules, {namespace}_runs), of the service accounts, the secret and the scheduler job (FIRECRON_NAMESPACE)."
  default     = "firecron"

  validation {
    # The same pattern as firecron.store._common.NAMESPACE_PATTERN.
    condition     = can(regex("^[a-z][a-z0-9_]{0,40}$", var.namespace))
    error_message = "namespace must match ^[a-z][a-z0-9_]{0,40}$ (lowercase letters, digits, '_')."
  }
}

variable "firestore_database" {
  type        = string
  description = "Firestore database id that firecron uses; \"(default)\" is the project's default database."
  default     = "(default)"
}

variable "create_firestore_database" {
  type        = bool
  description = "Create the Firestore database (native mode). false reuses an existing database named firestore_database, e.g. a project's existing (default)."
  default     = true
}

variable "firestore_location" {
  type        = string
  description = "Location of a created Firestore database: a region (europe-west1) or a multi-region (eur3, nam5). null uses var.region. Ignored when reusing a database."
  default     = null
}

variable "python_runtime" {
  type        = string
  description = "Cloud Functions runtime of every function."
  default     = "python311"

  validation {
    condition     = contains(["python311", "python312", "python313"], var.python_runtime)
    error_message = "python_runtime must be python311, python312 or python313 (firecron needs Python 3.11+)."
  }
}

variable "functions" {
  description = <<-EOT
    Worker functions, one Cloud Function each. The key is the deployed function's name,
    which schedules name as `target: {function: KEY}`; entry_point is the Python function
    in functions/main.py. memory uses Cloud Functions units (256M, 512M, 1G, 2G, ...).
  EOT
  type = map(object({
    entry_point     = string
    memory          = optional(string, "256M")
    timeout_seconds = optional(number, 540)
    max_instances   = optional(number, 100)
  }))
  default = {
    hello = { entry_point = "hello" }
    sleep = { entry_point = "sleep" }
    fail  = { entry_point = "fail" }
    # The example pipeline's tasks (schedules.yaml: daily-etl).
    extract = { entry_point = "extract" }
    join    = { entry_point = "join" }
    load    = { entry_point = "load" }
    # The continuous example (schedules.yaml: tail-stream): one instance at a time,
    # each for a window that must fit this timeout minus 30s.
    tail = { entry_point = "tail" }
  }

  validation {
    condition = alltrue([
      for name in keys(var.functions) : can(regex("^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$", name)) && !contains(["dispatch", "admin"], name)
    ])
    error_message = "functions keys are function names: lowercase letters, digits and '-', starting with a letter, at most 63 characters, and not \"dispatch\" or \"admin\"."
  }
  validation {
    condition     = alltrue([for f in values(var.functions) : can(regex("^[A-Za-z_][A-Za-z0-9_]*$", f.entry_point))])
    error_message = "entry_point must be a Python identifier: a top-level function of functions/main.py."
  }
  validation {
    condition     = alltrue([for f in values(var.functions) : f.timeout_seconds >= 1 && f.timeout_seconds <= 3600])
    error_message = "timeout_seconds must be between 1 and 3600 (the limit of an HTTP function)."
  }
  validation {
    condition     = alltrue([for f in values(var.functions) : f.max_instances >= 1])
    error_message = "max_instances must be at least 1."
  }
}

variable "dispatch" {
  description = "The dispatch function. It returns within seconds of a tick (claim + send + ack_timeout), so it needs little memory and few instances. cpu (\"1\", \"2\"...) gives each tick whole vCPUs: one fires several hundred runs a second over https, the default for 256M (a sixth of one) a sixth of that (README, Performance, \"Scale\")."
  type = object({
    memory          = optional(string, "256M")
    cpu             = optional(string)
    timeout_seconds = optional(number, 120)
    max_instances   = optional(number, 3)
  })
  default = {}

  validation {
    condition     = var.dispatch.timeout_seconds >= 15 && var.dispatch.timeout_seconds <= 1800
    error_message = "dispatch.timeout_seconds must be between 15 and 1800 (it is also the scheduler job's attempt deadline)."
  }
  validation {
    condition     = var.dispatch.max_instances >= 1
    error_message = "dispatch.max_instances must be at least 1."
  }
}

variable "schedule" {
  type        = string
  description = "Cron expression of the one Cloud Scheduler job that ticks the dispatcher (UTC). Every minute is Cloud Scheduler's finest resolution."
  default     = "* * * * *"
}

variable "scheduler_retry_count" {
  type        = number
  description = "How many times Cloud Scheduler retries a failed tick (0-5). A retried or duplicate tick is harmless: claims are exactly once."
  default     = 1

  validation {
    condition     = var.scheduler_retry_count >= 0 && var.scheduler_retry_count <= 5
    error_message = "scheduler_retry_count must be between 0 and 5."
  }
}

variable "run_retention_days" {
  type        = number
  description = "Days a finished run is kept before Firestore's TTL deletes it (FIRECRON_RUN_RETENTION; a schedule's `retention` overrides it)."
  default     = 30

  validation {
    condition     = var.run_retention_days >= 1 && floor(var.run_retention_days) == var.run_retention_days
    error_message = "run_retention_days must be a whole number of days, at least 1."
  }
}

variable "signing_secret" {
  type        = string
  description = "Standard Webhooks secret(s) whsec_<base64> that sign dispatches (FIRECRON_SIGNING_SECRET, comma-separated: all sign, any verifies). null: Terraform generates one. Rotate with \"NEW,OLD\", then \"NEW\"."
  default     = null
  sensitive   = true

  validation {
    # Standard base64, padded or not, of a non-empty key, after whsec_ (as firecron parses it).
    # Terraform's error for a refused value prints it despite `sensitive` (a known bug, see
    # opentofu/opentofu#2219): check a secret's form before a plan whose output is logged.
    condition = var.signing_secret == null || alltrue([
      for s in split(",", coalesce(var.signing_secret, "x")) :
      can(regex("^whsec_([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{4}|[A-Za-z0-9+/]{3}=?|[A-Za-z0-9+/]{2}(==)?)$", trimspace(s)))
    ])
    error_message = "signing_secret: every comma-separated entry must be whsec_ followed by standard base64 of the key (generate one with: echo \"whsec_$(openssl rand -base64 32)\")."
  }

  validation {
    condition     = var.signing_secret == null || length(trimspace(split(",", coalesce(var.signing_secret, "x"))[0])) >= 38
    error_message = "signing_secret: the first (signing) secret's key must be at least 24 bytes (32 base64 characters after whsec_)."
  }
}

variable "concurrency" {
  type        = number
  description = "Requests the dispatcher sends at once (FIRECRON_CONCURRENCY)."
  default     = 64

  validation {
    condition     = var.concurrency >= 1 && var.concurrency <= 1000
    error_message = "concurrency must be between 1 and 1000 (FIRECRON_MAX_OPEN, default 1000, must not be below it)."
  }
}

variable "ack_timeout" {
  type        = string
  description = "How long a dispatch waits for a worker's acknowledgement (FIRECRON_ACK_TIMEOUT), a duration such as 5s."
  default     = "5s"

  validation {
    condition     = can(regex("^([0-9]+(ms|s|m))+$", var.ack_timeout))
    error_message = "ack_timeout must be a duration such as 5s, 500ms or 1m."
  }
}

variable "shards" {
  type        = number
  description = "How many shard ticks share the due work (FIRECRON_SHARDS): the root tick POSTs one per shard, each on its own dispatch instance. dispatch's max instances is at least 2 * shards + 1."
  default     = 1

  validation {
    condition     = var.shards >= 1 && var.shards <= 60 && floor(var.shards) == var.shards
    error_message = "shards must be a whole number from 1 to 60."
  }
}

variable "max_continuations" {
  type        = number
  description = "How many continuations one tick may chain when its budget runs out with work still due (FIRECRON_MAX_CONTINUATIONS); 0 for none. Each is a Cloud Tasks task to dispatch itself."
  default     = 10

  validation {
    condition     = var.max_continuations >= 0 && var.max_continuations <= 1000 && floor(var.max_continuations) == var.max_continuations
    error_message = "max_continuations must be a whole number from 0 to 1000."
  }
}

variable "tick_budget" {
  type        = string
  description = "How long one tick keeps claiming due work (FIRECRON_TICK_BUDGET). Keep it below the tick interval and well below dispatch.timeout_seconds."
  default     = "50s"

  validation {
    condition     = can(regex("^([0-9]+(s|m))+$", var.tick_budget))
    error_message = "tick_budget must be a duration such as 50s or 1m."
  }
}

variable "source_bucket_name" {
  type        = string
  description = "Name of the bucket that holds the functions' source zip. null: \"{project_id}-{namespace}-source\" (underscores become '-')."
  default     = null
}

variable "pubsub_topics" {
  type        = list(string)
  description = "Pub/Sub topics that schedules notify (sinks of `type: pubsub`), as projects/PROJECT/topics/TOPIC. Non-empty: enables pubsub.googleapis.com and lets dispatch and the workers publish to each."
  default     = []

  validation {
    condition     = alltrue([for t in var.pubsub_topics : can(regex("^projects/[a-z][a-z0-9-]{4,28}[a-z0-9]/topics/[A-Za-z][A-Za-z0-9._~%+-]{2,254}$", t))])
    error_message = "pubsub_topics: every entry must be a topic name projects/PROJECT/topics/TOPIC, as the schedules' sinks write it."
  }
}

variable "notification_secrets" {
  type        = map(string)
  description = "The secrets that notification sinks name (a pagerduty sink's routing_key_env, an email sink's password_env): environment variable name => Secret Manager secret id in this project, which you create and fill (gcloud secrets create NAME --data-file=-). Each is mounted at its latest version as that variable on dispatch, the workers and admin, whose identities may read it."
  default     = {}

  validation {
    condition = alltrue([
      for name, secret in var.notification_secrets :
      can(regex("^[A-Za-z_][A-Za-z0-9_]*$", name)) && !startswith(upper(name), "FIRECRON_") && can(regex("^[A-Za-z0-9_-]{1,255}$", secret))
    ])
    error_message = "notification_secrets: each key must be an environment variable name not starting with FIRECRON_ (those are firecron's settings), each value a secret id (letters, digits, - and _)."
  }
}

variable "labels" {
  type        = map(string)
  description = "Labels put on every resource that takes labels (provider default_labels)."
  default     = { app = "firecron" }
}

variable "admin_members" {
  description = "Who may call the admin function (the admin API and the web console): IAM members, user:EMAIL or serviceAccount:EMAIL. They get roles/run.invoker on it, and the function checks their ID token's email against the same list (FIRECRON_ADMIN_MEMBERS). Empty: nobody can."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for m in var.admin_members : can(regex("^(user|serviceAccount):[^@\\s,]+@[^@\\s,]+$", m))])
    error_message = "admin_members entries are user:EMAIL or serviceAccount:EMAIL (a group, a domain or a public member cannot be checked against a token's email)."
  }
}

variable "delivery" {
  type        = string
  description = "How url and function targets that set no `delivery` are reached (FIRECRON_DELIVERY): direct (dispatch POSTs) or cloud_tasks (one Cloud Tasks task per send, at the occurrence's exact second; README, \"Delivery: direct or Cloud Tasks\")."
  default     = "direct"

  validation {
    condition     = contains(["direct", "cloud_tasks"], var.delivery)
    error_message = "delivery must be direct or cloud_tasks."
  }
}

variable "tasks_queue" {
  type = object({
    max_dispatches_per_second = optional(number, 500)
    max_concurrent_dispatches = optional(number, 1000)
    queues                    = optional(number, 1)
  })
  description = "The Cloud Tasks queues (tasks.tf): rate limits of each (tasks started per second, requests open at once: a worker holds its request for the whole run), and how many queues share the tasks (one dispatches at most 500/s; firecron picks a queue by a hash of the task's id)."
  default     = {}

  validation {
    condition     = var.tasks_queue.queues >= 1 && var.tasks_queue.queues <= 100 && floor(var.tasks_queue.queues) == var.tasks_queue.queues
    error_message = "tasks_queue.queues must be a whole number from 1 to 100."
  }

  validation {
    condition     = var.tasks_queue.max_dispatches_per_second > 0 && var.tasks_queue.max_dispatches_per_second <= 500
    error_message = "tasks_queue.max_dispatches_per_second must be above 0 and at most 500 (Cloud Tasks' limit)."
  }

  validation {
    condition     = var.tasks_queue.max_concurrent_dispatches >= 1 && var.tasks_queue.max_concurrent_dispatches <= 5000
    error_message = "tasks_queue.max_concurrent_dispatches must be between 1 and 5000 (Cloud Tasks' limit)."
  }
}
