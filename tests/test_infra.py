"""Offline checks of the Google Cloud deployment: infra/*.tf and the Makefile targets
(functions/requirements.txt has tests/test_requirements.py). Nothing here talks to Google
Cloud or needs providers.
"""

from __future__ import annotations

import ast
import base64
import functools
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import hcl2
import pytest

from _hcl import Module, load_module, single
from firecron.core.models import Target, TargetDelivery
from firecron.core.runs import Run
from firecron.core.shards import MAX_SHARDS
from firecron.errors import InvalidInputError
from firecron.settings import ENV_VARS, Settings
from firecron.store.firestore import REQUIRED_INDEXES
from firecron.transport.cloud_tasks import MAX_DISPATCH_DEADLINE, TaskQueue
from firecron.transport.sender import resolve_url
from firecron.transport.signing import parse_signing_secrets

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
MAIN_PY = ROOT / "functions" / "main.py"
FUNCTION = "google_cloudfunctions2_function"


@pytest.fixture(scope="module")
def tf() -> Module:
    return load_module(INFRA)


def _functions(tf: Module) -> dict[str, dict[str, Any]]:
    """Every Cloud Function resource, by resource name."""
    functions = tf.resources.get(FUNCTION, {})
    assert set(functions) == {"admin", "dispatch", "worker"}, sorted(functions)
    return functions


def _service_config(body: dict[str, Any], name: str) -> dict[str, Any]:
    return single(body["service_config"], f"{name}.service_config")


def _env(tf: Module, name: str) -> dict[str, Any]:
    env = tf.resolve(_service_config(_functions(tf)[name], name)["environment_variables"])
    assert isinstance(env, dict), f"{name}: environment_variables should be a literal map"
    return env


def _secret_env(tf: Module, name: str) -> dict[str, dict[str, Any]]:
    blocks = _service_config(_functions(tf)[name], name).get("secret_environment_variables", [])
    return {b["key"]: b for b in blocks}


# --- formatting -------------------------------------------------------------------------


def test_terraform_fmt() -> None:
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip("terraform is not on PATH")
    result = subprocess.run(
        [terraform, "fmt", "-check", "-recursive", "-diff", "infra"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"run `terraform fmt -recursive infra`:\n{result.stdout}"


# --- functions and their settings ----------------------------------------------------------


def _top_level_names(source: str) -> set[str]:
    """Names a module binds at top level (what functions-framework's --target can name)."""
    names: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names.update(a.asname or a.name.split(".")[0] for a in node.names)
    return names


def test_entry_points_exist_in_main_py(tf: Module) -> None:
    assert MAIN_PY.exists(), "functions/main.py holds the entry points"
    functions = _functions(tf)
    dispatch_build = single(functions["dispatch"]["build_config"], "dispatch.build_config")
    assert dispatch_build["entry_point"] == "dispatch"
    worker_build = single(functions["worker"]["build_config"], "worker.build_config")
    assert worker_build["entry_point"] == "${each.value.entry_point}"
    assert functions["worker"]["for_each"] == "${var.functions}"

    workers = tf.variables["functions"]["default"]
    assert workers, "var.functions has no default workers"
    wanted = {"dispatch"} | {spec["entry_point"] for spec in workers.values()}
    missing = sorted(wanted - _top_level_names(MAIN_PY.read_text(encoding="utf-8")))
    assert not missing, (
        f"entry points named in infra/ but not defined in functions/main.py: {missing}"
    )


def test_only_known_settings_are_set(tf: Module) -> None:
    # Anything FIRECRON_* anywhere in infra/, comments included, must be a real setting.
    named = set(re.findall(r"FIRECRON_[A-Z0-9_]+", tf.text))
    unknown = sorted(named - set(ENV_VARS))
    assert not unknown, (
        f"infra sets variables firecron does not read (settings.ENV_VARS): {unknown}"
    )
    for name in _functions(tf):
        keys = set(_env(tf, name)) | set(_secret_env(tf, name))
        assert keys <= set(ENV_VARS), f"{name}: {sorted(keys - set(ENV_VARS))}"


def test_every_function_gets_the_store_the_namespace_and_the_secret(tf: Module) -> None:
    for name in _functions(tf):
        env = _env(tf, name)
        assert env["FIRECRON_STORE"] == "${local.store_url}", name
        assert env["FIRECRON_NAMESPACE"] == "${var.namespace}", name
        assert env["FIRECRON_RUN_RETENTION"] == "${local.run_retention}", name
        # The secret comes from Secret Manager, never as a plain environment variable.
        assert "FIRECRON_SIGNING_SECRET" not in env, name
        secret = _secret_env(tf, name)["FIRECRON_SIGNING_SECRET"]
        assert secret["secret"] == "${google_secret_manager_secret.signing.secret_id}", name
        assert secret["version"] == "${google_secret_manager_secret_version.signing.version}"
        # The project number, which the API reports back: an id would show as a diff.
        assert secret["project_id"] == "${local.project_number}", name
    assert tf.locals["project_number"] == "${data.google_project.this.number}"
    assert tf.locals["store_url"].count("firestore://${var.project_id}") == 2
    assert tf.locals["run_retention"] == "${var.run_retention_days}d"


def test_dispatch_knows_the_workers_run_app_urls_and_its_own_audience(tf: Module) -> None:
    env = _env(tf, "dispatch")
    assert env["FIRECRON_FUNCTIONS_BASE_URL"] == "${local.functions_base_url}"
    assert env["FIRECRON_DISPATCH_AUDIENCE"] == "${local.dispatch_url}"
    assert env["FIRECRON_CONCURRENCY"] == "${tostring(var.concurrency)}"
    assert env["FIRECRON_ACK_TIMEOUT"] == "${var.ack_timeout}"
    # Each function's deterministic run.app URL: Cloud Run counts the scheduler's calls as
    # internal, and accepts an ID token's aud, only at a run.app URL (docs/design.md).
    template = "https://{function}-${local.project_number}.${var.region}.run.app"
    assert tf.locals["functions_base_url"] == template
    # Computed, not read from the resource (that would be a cycle): it must name dispatch.
    assert (
        tf.locals["dispatch_url"]
        == '${replace(local.functions_base_url, "{function}", "dispatch")}'
    )
    assert _functions(tf)["dispatch"]["name"] == "dispatch"
    assert _functions(tf)["worker"]["name"] == "${each.key}"
    assert "cloudfunctions.net" not in tf.text


def test_function_targets_resolve_to_the_workers_run_app_urls(tf: Module) -> None:
    """What firecron makes of the template the infra sets: the URL it posts to, which is
    also the audience of the worker's ID token (transport.idtoken)."""
    base = tf.locals["functions_base_url"]
    rendered = base.replace("${local.project_number}", "123456789012").replace(
        "${var.region}", "europe-west1"
    )
    settings = Settings.from_env({"FIRECRON_FUNCTIONS_BASE_URL": rendered})
    assert resolve_url(Target(function="hello"), settings.functions_base_url) == (
        "https://hello-123456789012.europe-west1.run.app"
    )
    # A worker name that would not fit the URL's DNS label is refused at plan time.
    worker = _functions(tf)["worker"]
    condition = single(single(worker["lifecycle"], "worker.lifecycle")["precondition"], "pre")
    assert condition["condition"] == '${length("${each.key}-${local.project_number}") <= 63}'


# --- the scheduler job and who may call what ---------------------------------------------


def test_scheduler_job_calls_dispatch_with_an_oidc_token(tf: Module) -> None:
    jobs = tf.resources["google_cloud_scheduler_job"]
    assert list(jobs) == ["tick"], "exactly one Cloud Scheduler job"
    job = jobs["tick"]
    assert job["schedule"] == "${var.schedule}"
    target = single(job["http_target"], "http_target")
    assert target["http_method"] == "POST"
    oidc = single(target["oidc_token"], "oidc_token")
    assert oidc["service_account_email"] == "${google_service_account.scheduler.email}"
    # The job calls the URL it signs for, and dispatch verifies (FIRECRON_DISPATCH_AUDIENCE)
    # that same audience: one expression, dispatch's run.app URL.
    assert target["uri"] == oidc["audience"] == "${local.dispatch_url}"
    assert oidc["audience"] == _env(tf, "dispatch")["FIRECRON_DISPATCH_AUDIENCE"]
    assert "run.app" in tf.locals["functions_base_url"]
    assert single(job["retry_config"], "retry_config")["retry_count"] == (
        "${var.scheduler_retry_count}"
    )
    assert job["attempt_deadline"]


def test_dispatch_is_internal_only_and_invokable_only_by_the_scheduler(tf: Module) -> None:
    assert _service_config(_functions(tf)["dispatch"], "dispatch")["ingress_settings"] == (
        "ALLOW_INTERNAL_ONLY"
    )
    invokers = {
        name: body
        for kind, named in tf.resources.items()
        if kind.endswith(("_iam_member", "_iam_binding", "_iam_policy"))
        for name, body in named.items()
        if "google_cloudfunctions2_function.dispatch" in str(body)
    }
    # The scheduler, and the tasks account: dispatch's own shard ticks and continuations
    # go through Cloud Tasks, past its internal-only ingress. Nobody else.
    assert sorted(invokers) == ["scheduler_invokes_dispatch", "tasks_invoke_dispatch"]
    for name, account in (
        ("scheduler_invokes_dispatch", "scheduler"),
        ("tasks_invoke_dispatch", "tasks"),
    ):
        grant = invokers[name]
        assert grant["role"] == "roles/run.invoker"
        # The function's Cloud Run service, as the API names it (not the function's name).
        assert grant["service"] == (
            "${google_cloudfunctions2_function.dispatch.service_config[0].service}"
        )
        assert grant["member"] == f"serviceAccount:${{google_service_account.{account}.email}}"
    # dispatch accepts the tokens of exactly those two.
    assert _env(tf, "dispatch")["FIRECRON_DISPATCH_CALLER"] == (
        "${google_service_account.scheduler.email},${google_service_account.tasks.email}"
    )


def test_dispatch_max_instances_follow_the_shards(tf: Module) -> None:
    config = _service_config(_functions(tf)["dispatch"], "dispatch")
    # A scale deployment gives each tick whole vCPUs; unset, the platform's default.
    assert config["available_cpu"] == "${var.dispatch.cpu}"
    assert "cpu" in str(tf.variables["dispatch"]["type"])
    # The root call, each shard's tick and the continuation it may POST before returning.
    assert config["max_instance_count"] == (
        "${max(var.dispatch.max_instances, 2 * var.shards + 1)}"
    )
    env = _env(tf, "dispatch")
    assert env["FIRECRON_SHARDS"] == "${tostring(var.shards)}"
    assert env["FIRECRON_MAX_CONTINUATIONS"] == "${tostring(var.max_continuations)}"


@pytest.mark.parametrize(
    ("grant_name", "account"),
    [("dispatch_invokes_worker", "dispatch"), ("workers_invoke_worker", "workers")],
)
def test_dispatcher_and_workers_may_invoke_every_worker(
    tf: Module, grant_name: str, account: str
) -> None:
    # Workers fire the runs their ends cause (then steps, pipeline tasks) with an ID token
    # of their own identity, so they need the same grant as the dispatcher.
    grant = tf.resource("google_cloud_run_service_iam_member", grant_name)
    assert grant["for_each"] == "${google_cloudfunctions2_function.worker}"
    assert grant["service"] == "${each.value.service_config[0].service}"
    assert grant["role"] == "roles/run.invoker"
    assert grant["member"] == f"serviceAccount:${{google_service_account.{account}.email}}"


# Settings of dispatch only: verifying the scheduler's calls to it.
_DISPATCH_ONLY = {
    "FIRECRON_DISPATCH_AUDIENCE",
    "FIRECRON_DISPATCH_CALLER",
    "FIRECRON_SHARDS",  # a worker's causes claim by id, never by shard
    "FIRECRON_MAX_CONTINUATIONS",
}


def test_workers_send_as_the_dispatcher_does(tf: Module) -> None:
    """A worker that ends a run which causes others claims and POSTs them itself, with the
    dispatcher's code (firecron.causes): every setting dispatch sends with, or judges
    deadlines by, must be the same on the workers, or a successor fired by a worker
    would go to another URL, without an ID token, or be watched by other deadlines."""
    dispatch, worker = _env(tf, "dispatch"), _env(tf, "worker")
    shared = {k: v for k, v in dispatch.items() if k not in _DISPATCH_ONLY}
    assert {k: worker.get(k) for k in shared} == shared
    for name in (
        "FIRECRON_FUNCTIONS_BASE_URL",
        "FIRECRON_FUNCTION_AUTH",
        "FIRECRON_CONCURRENCY",
        "FIRECRON_ACK_TIMEOUT",
        "FIRECRON_TICK_BUDGET",
    ):
        assert name in shared, name
    assert worker["FIRECRON_FUNCTION_AUTH"] == "oidc"
    # Deployed, every target is public: neither may reach private addresses.
    assert "FIRECRON_ALLOW_PRIVATE_TARGETS" not in dispatch
    assert "FIRECRON_ALLOW_PRIVATE_TARGETS" not in worker
    assert set(worker) - set(dispatch) == set()
    # What the workers' settings make of their sending settings, given values.
    given = {
        "${local.project_number}": "123456789012",
        "${var.region}": "europe-west1",
        "${tostring(var.concurrency)}": "64",
        "${var.ack_timeout}": "5s",
        "${var.tick_budget}": "50s",
    }
    rendered = {}
    for name in ("FIRECRON_FUNCTIONS_BASE_URL", "FIRECRON_FUNCTION_AUTH", "FIRECRON_CONCURRENCY"):
        value = str(tf.resolve(worker[name]))
        for expression, literal in given.items():
            value = value.replace(expression, literal)
        rendered[name] = value
    settings = Settings.from_env(rendered)
    assert settings.function_auth.value == "oidc"
    assert resolve_url(Target(function="etl-load"), settings.functions_base_url) == (
        "https://etl-load-123456789012.europe-west1.run.app"
    )


def _members(tf: Module, body: dict[str, Any]) -> list[str]:
    values: list[Any] = []
    if "member" in body:
        values.append(body["member"])
    values.extend(body.get("members", []))
    out: list[str] = []
    for value in values:
        if value == "${each.value}" and body.get("for_each") == "${toset(var.admin_members)}":
            out.append("var.admin_members")  # checked by test_only_admin_members_invoke_admin
        elif value == "${each.value.member}" and str(body.get("for_each")).startswith("${local."):
            # One grant per (thing, identity) pair, as tasks.tf's enqueue_grants and
            # iam.tf's notification_secret_grants: its members are those of one local map.
            grants = tf.resolve(body["for_each"])
            assert isinstance(grants, str), body["for_each"]
            found = re.search(r"member = local\.(\w+)\[pair\[1\]\]", grants)
            assert found is not None, grants
            assert f"keys(local.{found.group(1)}))" in grants, grants
            members = tf.resolve(f"${{local.{found.group(1)}}}")
            assert isinstance(members, dict), found.group(1)
            out.extend(members.values())
        elif value == "${each.value}":  # for_each over a literal map of members (or a local)
            members = tf.resolve(body["for_each"])
            assert isinstance(members, dict), body["for_each"]
            out.extend(members.values())
        else:
            out.append(value)
    return out


def test_nothing_is_public(tf: Module) -> None:
    assert "allUsers" not in tf.text
    assert "allAuthenticatedUsers" not in tf.text
    iam = [
        (f"{kind}.{name}", body)
        for kind, named in tf.resources.items()
        if "_iam_" in kind
        for name, body in named.items()
    ]
    assert iam
    for where, body in iam:
        for member in _members(tf, body):
            if member == "var.admin_members":
                assert where == "google_cloud_run_service_iam_member.admin_members_invoke_admin"
                continue
            assert member.startswith("serviceAccount:${google_service_account."), (where, member)


def test_each_function_has_its_own_identity(tf: Module) -> None:
    functions = _functions(tf)
    emails = {
        name: _service_config(body, name)["service_account_email"]
        for name, body in functions.items()
    }
    assert emails == {
        "admin": "${google_service_account.admin.email}",
        "dispatch": "${google_service_account.dispatch.email}",
        "worker": "${google_service_account.workers.email}",
    }
    assert _service_config(functions["worker"], "worker")["ingress_settings"] == "ALLOW_ALL"


# --- Firestore -----------------------------------------------------------------------------


def test_composite_indexes_are_exactly_the_required_ones(tf: Module) -> None:
    indexes = tf.resources["google_firestore_index"]
    assert list(indexes) == ["composite"], (
        "declare composite indexes only via local.composite_indexes"
    )
    index = indexes["composite"]
    assert index["for_each"] == "${local.composite_indexes}"
    assert index["collection"] == "${var.namespace}_${each.value.collection}"
    assert index["query_scope"] == "COLLECTION"

    declared = sorted(
        (spec["collection"], [(f["field_path"], f["order"]) for f in spec["fields"]])
        for spec in tf.locals["composite_indexes"].values()
    )
    required = sorted((suffix, list(fields)) for suffix, fields in REQUIRED_INDEXES)
    assert declared == required
    for _, fields in declared:
        # A composite index needs two real fields; single-field ones are automatic.
        assert len([f for f, _ in fields if f != "__name__"]) >= 2, fields


def test_sharded_deploys_drop_the_single_field_time_indexes(tf: Module) -> None:
    # Every sharded due query filters on bucket (the composite indexes); the single-field
    # indexes would only be the monotonic hot spot (docs/design.md).
    assert tf.locals["sharded_time_fields"].startswith("${var.shards > 1 ? {")
    assert "next_fire_at" in tf.locals["sharded_time_fields"]
    assert "watch_at" in tf.locals["sharded_time_fields"]
    field = tf.resource("google_firestore_field", "unindexed")
    assert field["for_each"] == "${merge(local.unindexed_fields, local.sharded_time_fields)}"
    assert field["index_config"] in ({}, [{}])
    sharded = [f for f in REQUIRED_INDEXES if f[1][0][0] == "bucket"]
    assert sorted((c, [n for n, _ in fields][1]) for c, fields in sharded) == [
        ("runs", "watch_at"),
        ("schedules", "next_fire_at"),
    ]


def test_runs_and_their_logs_expire_by_ttl_on_expire_at(tf: Module) -> None:
    fields = tf.resources["google_firestore_field"]
    ttl = sorted(
        (body["collection"], body["field"]) for body in fields.values() if "ttl_config" in body
    )
    assert ttl == [
        ("${var.namespace}_logs", "expire_at"),
        ("${var.namespace}_runs", "expire_at"),
    ]
    assert "expire_at" in Run.model_fields


def test_apis_stay_enabled_on_destroy(tf: Module) -> None:
    services = tf.resource("google_project_service", "required")
    assert services["disable_on_destroy"] is False
    assert services["for_each"] == "${local.services}"
    for api in ("cloudfunctions", "run", "cloudbuild", "cloudscheduler", "firestore"):
        assert f"{api}.googleapis.com" in tf.locals["always_services"], api


def test_pubsub_api_and_publishers_only_with_pubsub_topics(tf: Module) -> None:
    assert "pubsub.googleapis.com" not in tf.locals["always_services"]
    assert tf.locals["pubsub_services"] == (
        '${length(var.pubsub_topics) > 0 ? ["pubsub.googleapis.com"] : []}'
    )
    assert tf.locals["services"] == (
        "${toset(concat(local.always_services, local.pubsub_services))}"
    )
    assert tf.variables["pubsub_topics"]["default"] == []
    # Every function identity delivers events (dispatch's outbox, the workers', the admin's).
    grants = tf.resources["google_pubsub_topic_iam_member"]
    assert {body["member"] for body in grants.values()} == {
        "serviceAccount:${google_service_account.dispatch.email}",
        "serviceAccount:${google_service_account.workers.email}",
        "serviceAccount:${google_service_account.admin.email}",
    }
    for body in grants.values():
        assert body["for_each"] == "${toset(var.pubsub_topics)}"
        assert body["role"] == "roles/pubsub.publisher"


def test_notification_secrets_are_mounted_on_and_readable_by_every_function(tf: Module) -> None:
    """The secrets sinks name (routing_key_env, password_env) reach every function that
    delivers events, as the variables they are named by, and only their identities."""
    assert tf.variables["notification_secrets"]["default"] == {}
    for name, body in _functions(tf).items():
        (mount,) = [
            d["secret_environment_variables"]
            for d in _service_config(body, name).get("dynamic", [])
            if "secret_environment_variables" in d
        ]
        assert mount["for_each"] == "${var.notification_secrets}", name
        content = single(mount["content"], f"{name}: content")
        assert content["key"] == "${secret_environment_variables.key}", name
        assert content["secret"] == "${secret_environment_variables.value}", name
        assert content["version"] == "latest", name
    readers = tf.resource("google_secret_manager_secret_iam_member", "notification_secret_readers")
    assert readers["for_each"] == "${local.notification_secret_grants}"
    assert readers["secret_id"] == "${each.value.secret}"
    assert readers["member"] == "${each.value.member}"
    assert readers["role"] == "roles/secretmanager.secretAccessor"
    # Every identity that delivers events (and no other) reads every secret.
    pairs = tf.locals["notification_secret_grants"]
    assert "setproduct(keys(var.notification_secrets), keys(local.function_members))" in pairs
    assert "secret = var.notification_secrets[pair[0]]" in pairs
    assert tf.resolve("${local.function_members}") == {
        who: f"serviceAccount:${{google_service_account.{who}.email}}"
        for who in ("dispatch", "workers", "admin")
    }


def test_functions_wait_for_the_grants_to_settle(tf: Module) -> None:
    wait = tf.resource("time_sleep", "grants_settle")
    assert wait["create_duration"] == "60s"
    assert set(wait["depends_on"]) == {
        "${google_project_iam_member.build}",
        "${google_secret_manager_secret_iam_member.signing_accessor}",
        "${google_secret_manager_secret_iam_member.notification_secret_readers}",
    }
    for name, body in _functions(tf).items():
        assert "${time_sleep.grants_settle}" in body["depends_on"], name


def _terraform_block() -> dict[str, Any]:
    with (INFRA / "versions.tf").open(encoding="utf-8") as f:
        parsed = hcl2.load(
            f,
            serialization_options=hcl2.SerializationOptions(
                strip_string_quotes=True, explicit_blocks=False, with_comments=False
            ),
        )
    return single(parsed["terraform"], "terraform")


def test_versions_are_pinned() -> None:
    block = _terraform_block()
    # Write-only arguments (the signing secret's secret_data_wo) need Terraform 1.11.
    assert block["required_version"] == ">= 1.11"
    providers = single(block["required_providers"], "required_providers")
    assert providers["google"] == {"source": "hashicorp/google", "version": "~> 7.45"}
    assert providers["time"]["source"] == "hashicorp/time"


def test_terraform_lock_file_is_not_ignored() -> None:
    # The lock file pins each provider's exact build: `make deploy` writes it on its first
    # init, and it must be committable.
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        # An unpacked archive: no git to ask, so read the ignore file the checkout uses.
        patterns = (ROOT / ".gitignore").read_text().splitlines()
        assert not any("terraform.lock" in p and not p.startswith("#") for p in patterns)
        return
    result = subprocess.run(
        [git, "check-ignore", "-q", "--no-index", "infra/.terraform.lock.hcl"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1, "infra/.terraform.lock.hcl is git-ignored: commit it instead"


def test_outputs(tf: Module) -> None:
    assert {
        "dispatch_url",
        "worker_urls",
        "service_accounts",
        "source_bucket",
        "signing_secret_id",
        "scheduler_job",
    } <= set(tf.outputs)


def test_variables_are_typed_and_described(tf: Module) -> None:
    for name, body in tf.variables.items():
        assert "type" in body, f"variable {name} has no type"
        assert body.get("description"), f"variable {name} has no description"
    assert tf.variables["signing_secret"]["sensitive"] is True


# --- the signing secret ------------------------------------------------------------------

_KEY = base64.b64encode(bytes(range(32))).decode()


def test_generated_signing_secret_is_a_standard_webhooks_secret(tf: Module) -> None:
    # whsec_ + standard base64 of 32 random bytes, the form firecron and every Standard
    # Webhooks library read; a random_password would be used raw by neither.
    assert "random_password" not in tf.resources
    generated = tf.resource("random_id", "signing")
    assert generated["byte_length"] == 32
    assert generated["count"] == "${var.signing_secret == null ? 1 : 0}"
    assert '"whsec_${id.b64_std}"' in tf.locals["signing_secret"]
    assert tf.locals["signing_secret"].startswith("${coalesce(var.signing_secret, ")
    secret = tf.resource("google_secret_manager_secret_version", "signing")
    # Write-only: the value reaches Secret Manager but not the Terraform state, and a new
    # value (hence a new hash) writes a new version.
    assert "secret_data" not in secret
    assert secret["secret_data_wo"] == "${local.signing_secret}"
    assert secret["secret_data_wo_version"] == (
        "${parseint(substr(sha256(local.signing_secret), 0, 8), 16)}"
    )
    # What random_id.b64_std holds (standard base64, padded) passes firecron's own check.
    assert parse_signing_secrets(f"whsec_{_KEY}") == (f"whsec_{_KEY}",)


def _plan_offline(
    tmp_path: Path, *variables: str, files: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``terraform plan`` of infra/variables.tf (plus ``files``: name to text) alone, in
    ``tmp_path``, offline (no providers), with ``project_id``, ``region`` and
    ``variables`` (``name=value``); skips when terraform is not on PATH."""
    terraform = shutil.which("terraform")
    if terraform is None:
        pytest.skip("terraform is not on PATH")
    shutil.copy(INFRA / "variables.tf", tmp_path / "variables.tf")
    for name, text in (files or {}).items():
        (tmp_path / name).write_text(text)
    env = {**os.environ, "TF_IN_AUTOMATION": "1", "TF_CLI_CONFIG_FILE": os.devnull}
    run = functools.partial(
        subprocess.run, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    init = run([terraform, "init", "-input=false", "-no-color"], check=False)
    assert init.returncode == 0, init.stdout + init.stderr
    argv = [terraform, "plan", "-input=false", "-no-color"]
    argv += ["-var=project_id=proj-123", "-var=region=europe-west1"]
    return run(argv + [f"-var={v}" for v in variables], check=False)


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        (f"whsec_{_KEY}", True),
        (f"whsec_{_KEY.rstrip('=')}", True),  # unpadded, as the reference library allows
        (f"whsec_{_KEY},whsec_YWJjZA", True),  # rotation: only the first must be long
        (f"whsec_{_KEY}, whsec_b2xk", True),
        ("a-48-character-random-password-as-generated-before", False),
        (f"whsec_{_KEY},old-plain-secret", False),
        (f"whsec_{_KEY.replace('=', '')}!", False),
        (f"whsec_{_KEY[:-2]}-_", False),  # URL-safe alphabet is not standard base64
        ("whsec_", False),
        ("whsec_YWJjZA", False),  # a 4-byte signing key is too short
    ],
)
def test_signing_secret_variable_is_validated(tmp_path: Path, value: str, accepted: bool) -> None:
    """``terraform plan`` on infra/variables.tf alone (no providers, offline) checks the value."""
    plan = _plan_offline(tmp_path, f"signing_secret={value}")
    output = plan.stdout + plan.stderr
    assert (plan.returncode == 0) is accepted, output
    if not accepted:
        assert "signing_secret:" in output
    # The infra and firecron agree on the format (the infra adds a minimum key length).
    if accepted:
        parse_signing_secrets(value)
    elif "whsec_YWJjZA" not in value:
        with pytest.raises(InvalidInputError, match="FIRECRON_SIGNING_SECRET: entry"):
            parse_signing_secrets(value)


@pytest.mark.parametrize(
    ("value", "accepted"),
    [
        ("1", True),
        ("4", True),
        (str(MAX_SHARDS), True),
        ("0", False),
        (str(MAX_SHARDS + 1), False),
        ("1.5", False),
    ],
)
def test_shards_variable_is_validated_as_firecron_does(
    tmp_path: Path, value: str, accepted: bool
) -> None:
    """``var.shards`` takes exactly what ``FIRECRON_SHARDS`` takes (1 to MAX_SHARDS)."""
    plan = _plan_offline(tmp_path, f"shards={value}")
    output = plan.stdout + plan.stderr
    assert (plan.returncode == 0) is accepted, output
    if accepted:
        assert Settings.from_env({"FIRECRON_SHARDS": value}).shards == int(value)
    else:
        assert "shards must be a whole number from 1 to 60." in output
        with pytest.raises(InvalidInputError, match="FIRECRON_SHARDS"):
            Settings.from_env({"FIRECRON_SHARDS": value})


# --- Makefile targets ----------------------------------------------------------------------

MAKE = shutil.which("make")
needs_make = pytest.mark.skipif(MAKE is None, reason="make is not on PATH")


def _make(*args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    assert MAKE is not None
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PROJECT", "REGION", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "FIRECRON_NAMESPACE"}
    }
    if path is not None:
        env["PATH"] = path
    return subprocess.run(
        [MAKE, "--no-print-directory", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _fake_tools(folder: Path, *names: str) -> Path:
    """Stand-ins that only leave a trace, so a test sees whether a tool ran."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        tool = folder / name
        tool.write_text(f'#!/bin/sh\necho "$0 $*" >> "{folder}/ran"\n')
        tool.chmod(0o755)
    return folder / "ran"


@needs_make
def test_make_n_deploy_shows_the_whole_sequence() -> None:
    result = _make("-n", "deploy", "PROJECT=p", "REGION=r")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()

    def first(pattern: str) -> int:
        hits = [i for i, line in enumerate(lines) if re.search(pattern, line)]
        assert hits, f"{pattern!r} not in:\n{result.stdout}"
        return hits[0]

    requirements = first(r"-m firecron\._requirements functions/requirements\.txt")
    init = first(r"terraform -chdir=infra init")
    apply = first(r"terraform -chdir=infra apply")
    assert requirements < init < apply
    assert "-var project_id=p" in lines[apply]
    assert "-var region=r" in lines[apply]


@needs_make
@pytest.mark.parametrize("target", ["deploy", "plan", "destroy", "schedules-apply", "logs"])
def test_make_cloud_targets_need_project(target: str, tmp_path: Path) -> None:
    ran = _fake_tools(tmp_path / "bin", "terraform", "gcloud")
    result = _make(
        "-s", target, "REGION=r", path=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"
    )
    assert result.returncode != 0
    assert "PROJECT is required" in result.stderr
    assert not ran.exists(), f"{target} ran a tool before checking PROJECT: {ran.read_text()}"


@needs_make
@pytest.mark.parametrize("target", ["deploy", "plan", "destroy", "logs"])
def test_make_cloud_targets_need_region(target: str, tmp_path: Path) -> None:
    ran = _fake_tools(tmp_path / "bin", "terraform", "gcloud")
    result = _make(
        "-s", target, "PROJECT=p", path=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}"
    )
    assert result.returncode != 0
    assert "REGION is required" in result.stderr
    assert not ran.exists()


@needs_make
@pytest.mark.parametrize(("present", "missing"), [((), "terraform"), (("terraform",), "gcloud")])
def test_make_deploy_names_a_missing_tool(
    present: tuple[str, ...], missing: str, tmp_path: Path
) -> None:
    ran = _fake_tools(tmp_path / "bin", *present)
    result = _make("-s", "deploy", "PROJECT=p", "REGION=r", path=str(tmp_path / "bin"))
    assert result.returncode != 0
    assert f"error: {missing} not found on PATH" in result.stderr
    assert not ran.exists()


# --- the admin function ---------------------------------------------------------------------


def test_only_admin_members_invoke_admin_and_it_checks_them_again(tf: Module) -> None:
    admin = _functions(tf)["admin"]
    assert single(admin["build_config"], "admin.build_config")["entry_point"] == "admin"
    assert "admin" in _top_level_names(MAIN_PY.read_text(encoding="utf-8"))
    invokers = {
        name: body
        for kind, named in tf.resources.items()
        if kind.endswith(("_iam_member", "_iam_binding", "_iam_policy"))
        for name, body in named.items()
        if "google_cloudfunctions2_function.admin" in str(body)
    }
    assert list(invokers) == ["admin_members_invoke_admin"], sorted(invokers)
    grant = invokers["admin_members_invoke_admin"]
    assert grant["for_each"] == "${toset(var.admin_members)}"
    assert grant["member"] == "${each.value}"
    assert grant["role"] == "roles/run.invoker"
    assert grant["service"] == "${google_cloudfunctions2_function.admin.service_config[0].service}"
    assert tf.variables["admin_members"]["default"] == []

    env = _env(tf, "admin")
    # The code checks the same list, and the token's audience is the admin's own URL.
    assert env["FIRECRON_ADMIN_MEMBERS"] == '${join(",", var.admin_members)}'
    assert env["FIRECRON_ADMIN_AUDIENCE"] == "${local.admin_url}"
    assert tf.locals["admin_url"] == '${replace(local.functions_base_url, "{function}", "admin")}'
    assert tf.outputs["admin_url"]["value"] == "${local.admin_url}"
    # It fires runs (trigger, re-run, backfill) as dispatch does.
    dispatch = _env(tf, "dispatch")
    for name in ("FIRECRON_FUNCTIONS_BASE_URL", "FIRECRON_FUNCTION_AUTH", "FIRECRON_CONCURRENCY"):
        assert env[name] == dispatch[name], name
    assert "FIRECRON_ALLOW_PRIVATE_TARGETS" not in env
    grant = tf.resource("google_cloud_run_service_iam_member", "admin_invokes_worker")
    assert grant["for_each"] == "${google_cloudfunctions2_function.worker}"
    assert grant["member"] == "serviceAccount:${google_service_account.admin.email}"
    datastore_users = tf.resolve(
        tf.resource("google_project_iam_member", "datastore_user")["for_each"]
    )
    assert datastore_users["admin"] == "serviceAccount:${google_service_account.admin.email}"


@pytest.mark.parametrize(
    ("members", "accepted"),
    [
        (["user:alice@example.com", "serviceAccount:ci@p.iam.gserviceaccount.com"], True),
        (["allUsers"], False),
        (["group:ops@example.com"], False),
        (["alice@example.com"], False),
        (["user:a@b.c,user:d@e.f"], False),
    ],
)
def test_admin_members_variable_is_validated_as_the_settings_read_it(
    tf: Module, members: list[str], accepted: bool
) -> None:
    validation = single(tf.variables["admin_members"]["validation"], "validation")
    pattern = re.search(r'regex\("(.+)", m\)', validation["condition"])
    assert pattern is not None, validation["condition"]
    regex = pattern.group(1).replace("\\\\", "\\")
    assert all(re.fullmatch(regex, m) for m in members) == accepted
    if accepted:  # what the variable accepts, the function's settings read
        env = {"FIRECRON_ADMIN_MEMBERS": ",".join(members)}
        assert len(Settings.from_env(env).admin_members) == len(members)


# --- Cloud Tasks delivery (tasks.tf) -----------------------------------------------------


def test_the_tasks_queue_makes_one_attempt_at_the_configured_rates(tf: Module) -> None:
    queue = tf.resource("google_cloud_tasks_queue", "dispatch")
    assert queue["for_each"] == "${local.tasks_queue_names}"
    assert queue["name"] == "${each.value}"
    assert queue["location"] == "${var.region}"
    # firecron's retry policy decides; a new attempt is a new task.
    assert single(queue["retry_config"], "retry_config") == {"max_attempts": 1}
    rates = single(queue["rate_limits"], "rate_limits")
    assert rates == {
        "max_dispatches_per_second": "${var.tasks_queue.max_dispatches_per_second}",
        "max_concurrent_dispatches": "${var.tasks_queue.max_concurrent_dispatches}",
    }
    assert "cloudtasks.googleapis.com" in tf.locals["always_services"]
    # The precondition's bound is the longest dispatch_deadline firecron asks for.
    seconds = int(MAX_DISPATCH_DEADLINE.total_seconds())
    precondition = single(single(queue["lifecycle"], "lifecycle")["precondition"], "precondition")
    assert f"timeout_seconds <= {seconds}" in precondition["condition"]


def test_every_firing_function_knows_the_queue_and_the_tasks_identity(tf: Module) -> None:
    assert tf.locals["tasks_queue"] == (
        '${join(",", [for i in range(var.tasks_queue.queues) : '
        '"projects/${var.project_id}/locations/${var.region}/queues/'
        '${local.tasks_queue_names[tostring(i)]}"])}'
    )
    # What the queue list renders to, and that firecron reads it: the test below.
    for name in ("dispatch", "worker", "admin"):
        env = _env(tf, name)
        assert env["FIRECRON_DELIVERY"] == "${var.delivery}", name
        assert env["FIRECRON_TASKS_QUEUE"] == "${local.tasks_queue}", name
        assert env["FIRECRON_TASKS_SERVICE_ACCOUNT"] == "${google_service_account.tasks.email}"
    assert (
        Settings.from_env(
            {
                "FIRECRON_DELIVERY": "cloud_tasks",
                "FIRECRON_TASKS_QUEUE": (
                    "projects/my-project/locations/europe-west1/queues/firecron-dispatch"
                ),
            }
        ).delivery
        is TargetDelivery.cloud_tasks
    )


@pytest.mark.parametrize("queues", [1, 3])
def test_several_queues_reach_firecron_as_one_comma_separated_setting(
    tmp_path: Path, queues: int
) -> None:
    """``terraform plan`` (offline, no providers) of tasks.tf's queue locals with the
    variables: the names and FIRECRON_TASKS_QUEUE that firecron then reads."""
    text = (INFRA / "tasks.tf").read_text()
    start = text.index("locals {\n  # Queue ids are")
    block = text[start : text.index("\n}\n", start) + 3]
    plan = _plan_offline(
        tmp_path,
        f"signing_secret=whsec_{_KEY}",
        f"tasks_queue={{queues = {queues}}}",
        files={"queues.tf": block + '\noutput "queue" {\n  value = local.tasks_queue\n}\n'},
    )
    assert plan.returncode == 0, plan.stdout + plan.stderr
    rendered = re.search(r'queue\s+=\s+"([^"]+)"', plan.stdout)
    assert rendered, plan.stdout
    base = "projects/proj-123/locations/europe-west1/queues/firecron-dispatch"
    expected = [base] + [f"{base}-{i}" for i in range(1, queues)]
    assert rendered.group(1) == ",".join(expected)
    value = Settings.from_env({"FIRECRON_TASKS_QUEUE": rendered.group(1)}).tasks_queue
    assert value is not None
    queue = TaskQueue(value, service_account=None, allow_private_targets=False)
    assert queue.queues == tuple(expected)
    # The first queue keeps the name a one-queue deploy gave it.
    assert queue.queue == base


def test_the_delivery_variable_accepts_exactly_the_settings_values(tf: Module) -> None:
    variable = tf.variables["delivery"]
    assert variable["default"] == TargetDelivery.direct.value
    condition = single(variable["validation"], "validation")["condition"]
    listed = re.findall(r'"([a-z_]+)"', condition)
    assert sorted(listed) == sorted(d.value for d in TargetDelivery)


def test_the_firing_identities_enqueue_and_only_the_tasks_identity_is_sent(tf: Module) -> None:
    firing = {
        f"serviceAccount:${{google_service_account.{a}.email}}"
        for a in ("dispatch", "workers", "admin")
    }
    enqueue = tf.resource("google_cloud_tasks_queue_iam_member", "enqueuers")
    assert enqueue["for_each"] == "${local.enqueue_grants}"
    assert enqueue["name"] == "${google_cloud_tasks_queue.dispatch[each.value.queue].name}"
    assert enqueue["role"] == "roles/cloudtasks.enqueuer"
    assert set(_members(tf, enqueue)) == firing
    # Creating a task with an oidc_token needs actAs on the token's account.
    act_as = tf.resource("google_service_account_iam_member", "enqueuers_act_as_tasks")
    assert act_as["service_account_id"] == "${google_service_account.tasks.name}"
    assert act_as["role"] == "roles/iam.serviceAccountUser"
    assert set(_members(tf, act_as)) == firing
    invoke = tf.resource("google_cloud_run_service_iam_member", "tasks_invoke_worker")
    assert invoke["for_each"] == "${google_cloudfunctions2_function.worker}"
    assert invoke["role"] == "roles/run.invoker"
    assert invoke["member"] == "serviceAccount:${google_service_account.tasks.email}"
    # The tasks identity may invoke the workers and dispatch (its shard ticks and
    # continuations go through the queue), and nothing else.
    tasks_member = "serviceAccount:${google_service_account.tasks.email}"
    granted = [
        f"{kind}.{name}"
        for kind, named in tf.resources.items()
        if "_iam_" in kind
        for name, body in named.items()
        if tasks_member in _members(tf, body)
    ]
    assert sorted(granted) == [
        "google_cloud_run_service_iam_member.tasks_invoke_dispatch",
        "google_cloud_run_service_iam_member.tasks_invoke_worker",
    ]
