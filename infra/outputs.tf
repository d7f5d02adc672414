output "dispatch_url" {
  description = "run.app URL of the dispatch function, which the scheduler job calls and signs its token for (private: only the scheduler's identity may invoke it)."
  value       = local.dispatch_url
}

output "worker_urls" {
  description = "run.app URL of each worker function, by name, where dispatch sends them; schedules target them as {function: NAME}."
  value       = { for name, f in google_cloudfunctions2_function.worker : name => replace(local.functions_base_url, "{function}", name) }
}

output "function_timeouts" {
  description = "FIRECRON_FUNCTION_TIMEOUTS: each worker function's timeout in seconds, by name. `make schedules-apply` passes it to `firecron apply`, which refuses a continuous window that does not fit its function's timeout."
  value       = { for name, f in var.functions : name => f.timeout_seconds }
}

output "functions_base_url" {
  description = "FIRECRON_FUNCTIONS_BASE_URL: the template `function` targets resolve with ({function} is the name)."
  value       = local.functions_base_url
}

output "service_accounts" {
  description = "Email of each service account firecron runs as."
  value = {
    scheduler = google_service_account.scheduler.email
    dispatch  = google_service_account.dispatch.email
    workers   = google_service_account.workers.email
    admin     = google_service_account.admin.email
    build     = google_service_account.build.email
    tasks     = google_service_account.tasks.email
  }
}

output "source_bucket" {
  description = "Bucket holding the functions' source zips."
  value       = google_storage_bucket.source.name
}

output "signing_secret_id" {
  description = "Secret Manager secret holding FIRECRON_SIGNING_SECRET (read it with gcloud secrets versions access latest --secret ID)."
  value       = google_secret_manager_secret.signing.secret_id
}

output "scheduler_job" {
  description = "The Cloud Scheduler job that ticks dispatch."
  value       = google_cloud_scheduler_job.tick.name
}

output "store_url" {
  description = "FIRECRON_STORE for the CLI: firecron apply schedules.yaml --store <this>."
  value       = local.store_url
}

output "namespace" {
  description = "FIRECRON_NAMESPACE for the CLI."
  value       = var.namespace
}

output "admin_url" {
  description = "run.app URL of the admin function: the web console at /, the admin API at /api/v1 (for var.admin_members, with a Google ID token: curl -H \"Authorization: Bearer $(gcloud auth print-identity-token)\")."
  value       = local.admin_url
}

output "tasks_queue" {
  description = "FIRECRON_TASKS_QUEUE: the Cloud Tasks queues of `delivery: cloud_tasks` and of dispatch's calls to itself, comma-separated (tasks.tf)."
  value       = local.tasks_queue
}
