# Cloud Tasks delivery (a target's `delivery: cloud_tasks`, or every http target's with
# var.delivery = "cloud_tasks"): the firing functions enqueue one task per send into this
# queue instead of POSTing; Cloud Tasks makes the POST at the occurrence's exact second and
# holds it open while the worker works. README, "Delivery: direct or Cloud Tasks".
#
# The queue exists whatever var.delivery says, so a single target may opt in; an idle
# queue costs nothing.
#
#   dispatch, workers, admin  enqueue (roles/cloudtasks.enqueuer on this queue) and act as
#                             the tasks account (roles/iam.serviceAccountUser on it), which
#                             creating a task with an oidc_token requires
#   tasks                     the identity of the tasks' ID tokens: may invoke each worker
#                             (Cloud Tasks' own service agent mints the tokens for it)

locals {
  # Queue ids are [A-Za-z0-9-], at most 100 characters.
  tasks_queue_name = "${replace(var.namespace, "_", "-")}-dispatch"
  # One queue dispatches at most 500 tasks/s; var.tasks_queue.queues spreads the tasks
  # over several (firecron picks one by a hash of the task's id). The first keeps the
  # name it always had, so raising the count adds queues and moves nothing.
  tasks_queue_names = {
    for i in range(var.tasks_queue.queues) :
    tostring(i) => i == 0 ? local.tasks_queue_name : "${local.tasks_queue_name}-${i}"
  }
  # FIRECRON_TASKS_QUEUE: every queue's path, comma-separated, the first first.
  tasks_queue = join(",", [
    for i in range(var.tasks_queue.queues) :
    "projects/${var.project_id}/locations/${var.region}/queues/${local.tasks_queue_names[tostring(i)]}"
  ])
}

locals {
  # The identities whose code fires runs (the dispatcher's code: firecron.dispatch).
  enqueuers = local.function_members
}

resource "google_cloud_tasks_queue" "dispatch" {
  for_each = local.tasks_queue_names

  project  = var.project_id
  location = var.region
  name     = each.value

  rate_limits {
    max_dispatches_per_second = var.tasks_queue.max_dispatches_per_second
    max_concurrent_dispatches = var.tasks_queue.max_concurrent_dispatches
  }

  # One attempt: firecron's retry policy decides whether a failed attempt runs again
  # (a new attempt is a new task), as for a direct send.
  retry_config {
    max_attempts = 1
  }

  lifecycle {
    precondition {
      # Cloud Tasks waits at most 30 minutes for an HTTP target (dispatch_deadline); a
      # worker that may run longer must be reached directly.
      condition     = var.delivery != "cloud_tasks" || alltrue([for f in values(var.functions) : f.timeout_seconds <= 1800])
      error_message = "delivery = \"cloud_tasks\" holds each request at most 30 minutes: every function's timeout_seconds must be at most 1800, or keep delivery = \"direct\" and set `delivery: cloud_tasks` on the targets that fit."
    }
  }

  depends_on = [google_project_service.required]
}

resource "google_service_account" "tasks" {
  project      = var.project_id
  account_id   = "${local.account_prefix}-tasks"
  display_name = "firecron Cloud Tasks deliveries (${var.namespace})"
  description  = "Identity of the ID tokens Cloud Tasks sends to the workers; may invoke only the workers."

  depends_on = [google_project_service.required]
}

# Before var.tasks_queue.queues, the one queue was not keyed: it is queue "0".
moved {
  from = google_cloud_tasks_queue.dispatch
  to   = google_cloud_tasks_queue.dispatch["0"]
}

locals {
  # Every (queue, firing identity) pair: each identity may enqueue into every queue.
  enqueue_grants = {
    for pair in setproduct(keys(local.tasks_queue_names), keys(local.enqueuers)) :
    "${pair[1]}/${pair[0]}" => { queue = pair[0], member = local.enqueuers[pair[1]] }
  }
}

resource "google_cloud_tasks_queue_iam_member" "enqueuers" {
  for_each = local.enqueue_grants

  project  = var.project_id
  location = var.region
  name     = google_cloud_tasks_queue.dispatch[each.value.queue].name
  role     = "roles/cloudtasks.enqueuer"
  member   = each.value.member
}

# Before var.tasks_queue.queues, the grants were keyed by identity alone.
moved {
  from = google_cloud_tasks_queue_iam_member.enqueuers["dispatch"]
  to   = google_cloud_tasks_queue_iam_member.enqueuers["dispatch/0"]
}

moved {
  from = google_cloud_tasks_queue_iam_member.enqueuers["workers"]
  to   = google_cloud_tasks_queue_iam_member.enqueuers["workers/0"]
}

moved {
  from = google_cloud_tasks_queue_iam_member.enqueuers["admin"]
  to   = google_cloud_tasks_queue_iam_member.enqueuers["admin/0"]
}

resource "google_service_account_iam_member" "enqueuers_act_as_tasks" {
  for_each = local.enqueuers

  service_account_id = google_service_account.tasks.name
  role               = "roles/iam.serviceAccountUser"
  member             = each.value
}

resource "google_cloud_run_service_iam_member" "tasks_invoke_worker" {
  for_each = google_cloudfunctions2_function.worker

  project  = var.project_id
  location = var.region
  service  = each.value.service_config[0].service
  role     = "roles/run.invoker"
  member   = "serviceAccount:${google_service_account.tasks.email}"
}
