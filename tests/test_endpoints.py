"""Endpoint templates, the team file and function registration.

Templates are rendered and then loaded with globus-compute-endpoint's own config loader;
the multi-user template is rendered by the endpoint's own (sandboxed Jinja) renderer
after its schema check. Registration runs the real SDK Client against
``globus_sdk.testing`` responses.
"""

from __future__ import annotations

import json
import os
import re
import uuid

import globus_sdk
import pytest
import responses
from globus_sdk.testing import RegisteredResponse

from driver.backends.base import FUNCTIONS
from driver.doctor import compare_environments
from driver.team import Site, TeamFile, driver_environment, dumps_toml, read_team, register_functions, write_team
from driver.templates import MULTI_USER, TEMPLATES_DIR, LoadedEndpoint, load_rendered, render_template, template_names
from driver.errors import ConfigError

WORKER_INIT = "module use /soft/modulefiles\nmodule load conda\nsource /eagle/P/remote-al/venv/bin/activate"


@pytest.fixture
def team() -> TeamFile:
    return TeamFile(
        endpoints={"gpu": str(uuid.uuid4()), "cpu": str(uuid.uuid4())},
        functions={name: str(uuid.uuid4()) for name in FUNCTIONS},
        group=str(uuid.uuid4()),
        slots={"gpu": 8},
        user_endpoint_config={"gpu": {"pool": "gpu", "account": "P", "queue": "debug",
                                      "worker_init": 'source "/x y"/bin/activate\necho ok'}},
        sites={"polaris": Site(root="/eagle/P/remote-al", collection=str(uuid.uuid4()))},
    )


GPU_OPTS = {"pool": "gpu", "account": "PROJ", "queue": "debug", "walltime": "00:30:00",
            "max_blocks": 2, "worker_init": 'source "/home/a b/venv/bin/activate"\necho ${#PATH}'}


def _render(name: str, team: TeamFile, tmp_path, **options) -> LoadedEndpoint:
    """Render ``name`` into an endpoint directory and load it as the endpoint would."""
    if name == MULTI_USER:
        rendered = render_template(name, allowed_functions=team.function_ids(), **options)
        return load_rendered(rendered.write(tmp_path / name), GPU_OPTS)
    source = (TEMPLATES_DIR / f"{name}.yaml.j2").read_text()
    if "address_interface" in source:
        options.setdefault("address_interface", "lo")  # Polaris' hsn0 is not on this machine
    rendered = render_template(name, "PROJ", "debug", WORKER_INIT, team.function_ids(), **options)
    return load_rendered(rendered.write(tmp_path / name))


def test_templates_are_found():
    assert {"polaris-gpu", "polaris-cpu", "slurm-gpu", "slurm-cpu", "local", "multi-user"} <= set(
        template_names())


@pytest.mark.parametrize("name", template_names())
def test_template_renders_and_the_endpoint_loader_accepts_it(name, team, tmp_path):
    loaded = _render(name, team, tmp_path)
    assert type(loaded.core).__name__ == "CoreEndpointConfig"  # no engine in config.yaml
    assert sorted(loaded.core.allowed_functions) == sorted(team.functions.values())
    engine = loaded.user.engine
    assert type(engine).__name__ == "GlobusComputeEngine"
    # Pickled arguments are refused: the driver sends JSON.
    assert {t.__name__ for t in engine.serde.allowed_deserializer_types} == {"DillCode", "JSONData"}
    assert engine.max_retries_on_system_failure == 0
    provider = engine.executor.provider
    expected_init = GPU_OPTS["worker_init"] if name == MULTI_USER else WORKER_INIT
    assert provider.worker_init.strip() == expected_init
    if name != "local":
        assert provider.account == "PROJ"


def test_endpoint_directory_has_both_files(team, tmp_path):
    rendered = render_template("polaris-gpu", "PROJ", "debug", WORKER_INIT, team.function_ids())
    assert set(rendered.files) == {"config.yaml", "user_config_template.yaml.j2"}
    assert "engine:" not in rendered.files["config.yaml"]
    assert "# ==== config.yaml ====" in str(rendered)
    multi = render_template(MULTI_USER, allowed_functions=team.function_ids())
    assert set(multi.files) == {"config.yaml", "user_config_template.yaml.j2", "user_config_schema.json"}


def test_polaris_gpu_gives_one_gpu_per_worker(team, tmp_path):
    htex = _render("polaris-gpu", team, tmp_path).user.engine.executor
    assert htex.max_workers_per_node == 4
    assert list(htex.available_accelerators) == ["0", "1", "2", "3"]
    assert type(htex.provider).__name__ == "PBSProProvider"
    assert htex.provider.queue == "debug"
    assert htex.provider.select_options == "ngpus=4"


def test_cpu_templates_give_whole_jobs_to_one_worker(team, tmp_path):
    for name in ("polaris-cpu", "slurm-cpu"):
        htex = _render(name, team, tmp_path).user.engine.executor
        assert htex.max_workers_per_node == 1
        assert type(htex.provider.launcher).__name__ == "SimpleLauncher"


def test_rendered_allowed_functions_name_each_id(team):
    text = render_template("local", worker_init="true", allowed_functions=team.function_ids()).files[
        "config.yaml"]
    for name, fid in team.functions.items():
        assert re.search(rf"^  - {fid}  # {name}$", text, re.M)


def test_options_reach_the_provider(team, tmp_path):
    loaded = _render("slurm-gpu", team, tmp_path, walltime="04:00:00", nodes_per_block=2, max_blocks=3,
                     gpus_per_node=8, display_name="MD on Delta")
    htex = loaded.user.engine.executor
    assert (htex.provider.walltime, htex.provider.nodes_per_block, htex.provider.max_blocks) == (
        "04:00:00", 2, 3)
    assert htex.max_workers_per_node == 8 and htex.provider.partition == "debug"
    assert loaded.core.display_name == "MD on Delta"


def test_values_survive_the_endpoints_own_jinja_pass(team, tmp_path):
    worker_init = 'arr=(a b); echo ${#arr[@]} {{ not_jinja }} {% raw-ish %}\nexport X="{#"'
    rendered = render_template("local", worker_init=worker_init)
    loaded = load_rendered(rendered.write(tmp_path / "ep"))
    assert loaded.user.engine.executor.provider.worker_init.strip() == worker_init


def test_without_team_the_endpoint_is_unrestricted(tmp_path):
    rendered = render_template("local", worker_init="true")
    assert load_rendered(rendered.write(tmp_path / "ep")).core.allowed_functions is None


def test_missing_account_is_a_config_error():
    with pytest.raises(ConfigError) as err:
        render_template("polaris-gpu", queue="debug", worker_init="true")
    assert err.value.field == "account" and "--account" in str(err.value)


def test_unknown_option_and_bad_function_id_are_config_errors():
    with pytest.raises(ConfigError, match="no placeholder"):
        render_template("local", worker_init="true", wallclock="01:00:00")
    with pytest.raises(ConfigError, match="not a UUID"):
        render_template("local", worker_init="true", allowed_functions={"md": "nope"})
    with pytest.raises(ConfigError, match="per user"):
        render_template(MULTI_USER, account="PROJ")


@pytest.mark.parametrize("walltime", ["1h", "01:00", "1:60:00", "01:00:00:00", ""])
def test_a_walltime_that_is_not_hh_mm_ss_is_refused(walltime):
    with pytest.raises(ConfigError) as err:
        render_template("polaris-gpu", "PROJ", "debug", "true", walltime=walltime)
    assert err.value.field == "--walltime" and "HH:MM:SS" in str(err.value)
    render_template("polaris-gpu", "PROJ", "debug", "true", walltime="100:30:00", address_interface="lo")


def test_a_missing_network_interface_is_named_with_its_option(tmp_path, capsys):
    """Polaris' hsn0 is not on this machine: the message names it and --address-interface,
    and speaks of no campaign; the endpoint directory is not written."""
    from driver.cli import main

    out = tmp_path / "ep"
    assert main(["endpoint", "render", "polaris-gpu", "--account", "PROJ", "--queue", "debug",
                 "--worker-init", "true", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'hsn0'" in err and "--address-interface" in err and "does not exist on this machine" in err
    assert "campaign" not in err and "Traceback" not in err and "No such device" not in err
    assert not out.exists()
    assert main(["endpoint", "render", "polaris-gpu", "--account", "PROJ", "--queue", "debug",
                 "--worker-init", "true", "--walltime", "2 hours"]) == 2
    assert "--walltime" in capsys.readouterr().err


def test_engine_in_config_yaml_is_refused(tmp_path):
    (tmp_path / "config.yaml").write_text("engine:\n  type: ThreadPoolEngine\n")
    with pytest.raises(ConfigError, match="engine block"):
        load_rendered(tmp_path)
    (tmp_path / "config.yaml").write_text("display_name: x\n")
    (tmp_path / "user_config_template.yaml.j2").write_text("engine:\n  type: NoSuchEngine\n")
    with pytest.raises(ConfigError, match="rejects"):
        load_rendered(tmp_path)


@pytest.mark.parametrize("pool", ["gpu", "cpu"])
def test_multi_user_template_renders_per_user_and_loads(pool, team, tmp_path):
    import jsonschema

    schema = json.loads((TEMPLATES_DIR / "user_config_schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    endpoint_dir = render_template(MULTI_USER, allowed_functions=team.function_ids()).write(tmp_path)
    loaded = load_rendered(endpoint_dir, {**GPU_OPTS, "pool": pool})
    htex = loaded.user.engine.executor
    assert htex.provider.account == "PROJ" and htex.provider.walltime == "00:30:00"
    assert htex.provider.max_blocks == 2
    assert htex.provider.worker_init.strip() == GPU_OPTS["worker_init"]
    assert htex.max_workers_per_node == (4 if pool == "gpu" else 1)
    assert (htex.provider.select_options == "ngpus=4") is (pool == "gpu")


@pytest.mark.parametrize("bad", [
    {"pool": "gpu", "queue": "debug", "worker_init": "x"},  # no account
    {"pool": "tpu", "account": "P", "queue": "debug", "worker_init": "x"},
    {"pool": "gpu", "account": "P; rm -rf ~", "queue": "debug", "worker_init": "x"},
    {"pool": "gpu", "account": "P", "queue": "debug", "worker_init": "x", "engine": "Thread"},
])
def test_multi_user_schema_refuses_bad_options(bad, team, tmp_path):
    endpoint_dir = render_template(MULTI_USER, allowed_functions=team.function_ids()).write(tmp_path)
    with pytest.raises(ConfigError, match="user_config_schema.json"):
        load_rendered(endpoint_dir, bad)


def test_team_user_endpoint_config_passes_the_schema(team, tmp_path):
    endpoint_dir = render_template(MULTI_USER).write(tmp_path)
    for opts in team.user_endpoint_config.values():
        load_rendered(endpoint_dir, opts)


# ------------------------------------------------------------------ team file
def test_team_file_round_trips(team, tmp_path):
    path = write_team(team, tmp_path / "team.toml")
    assert read_team(path) == team
    assert path.read_text().startswith("# remote-al team file")


def test_toml_writer_escapes_strings():
    import tomllib

    data = {"a": 'quote " backslash \\ tab \t nl \n del \x7f é 😀', "n": 3, "x": 0.5, "b": False,
            "l": ["p", "q"], "t": {"odd key": {"k": "v"}}}
    assert tomllib.loads(dumps_toml(data)) == data


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d["endpoints"].update(gpu="not-a-uuid"), "endpoints.gpu"),
    (lambda d: d["functions"].update(dft=str(uuid.uuid4())), "functions"),
    (lambda d: d.update(colour="blue"), "team"),
    (lambda d: d.update(slots={"gpu": 0}), "slots.gpu"),
    (lambda d: d["sites"]["polaris"].pop("root"), "sites.polaris"),
])
def test_team_file_errors_name_the_field(team, mutate, field):
    data = json.loads(json.dumps(team.to_dict()))
    mutate(data)
    with pytest.raises(ConfigError) as err:
        TeamFile.from_dict(data)
    assert field in err.value.field


def test_missing_team_file_says_how_to_make_one(tmp_path):
    with pytest.raises(ConfigError, match="register"):
        read_team(tmp_path / "team.toml")


def test_missing_entries_name_the_fix(team):
    partial = TeamFile(endpoints={"gpu": team.endpoints["gpu"]})
    with pytest.raises(ConfigError, match="--cpu-endpoint"):
        partial.endpoint_id("cpu")
    with pytest.raises(ConfigError, match="register"):
        partial.function_id("md")
    assert partial.slots_for("gpu") == 4 and team.slots_for("gpu") == 8


# --------------------------------------------------------------- registration
@pytest.fixture
def http():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


def test_register_functions_writes_the_team_file(http, tmp_path):
    from globus_compute_sdk import Client
    from globus_compute_sdk.serialize import ComputeSerializer

    registered = []

    def register(request):
        body = json.loads(request.body)
        registered.append(body)
        return 200, {}, json.dumps({"function_uuid": str(uuid.uuid4())})

    http.add_callback("POST", RegisteredResponse(service="compute", path="/v3/functions",
                                                 method="POST").full_url, callback=register,
                      content_type="application/json")
    client = Client(authorizer=globus_sdk.NullAuthorizer(), do_version_check=False)
    group, gpu = str(uuid.uuid4()), str(uuid.uuid4())
    path = tmp_path / "team.toml"

    team = register_functions(client, path, group=group, endpoints={"gpu": gpu})
    assert read_team(path) == team
    assert set(team.functions) == set(FUNCTIONS) and len(set(team.functions.values())) == len(FUNCTIONS)
    assert team.endpoints == {"gpu": gpu} and team.group == group
    assert {b["function_name"] for b in registered} == {p.split(":")[1] for p in FUNCTIONS.values()}
    assert all(b["group"] == group for b in registered)
    # The function travels by reference: it is the importable remote_al function.
    from remote_al import functions

    fn = ComputeSerializer().unpack_buffers(registered[0]["function_code"])[0]
    assert ComputeSerializer().deserialize(fn) is getattr(functions, registered[0]["function_name"])

    # Adding an endpoint later keeps the function ids (endpoint configs list them).
    cpu = str(uuid.uuid4())
    again = register_functions(client, path, endpoints={"cpu": cpu})
    assert len(registered) == len(FUNCTIONS)
    assert again.functions == team.functions and again.endpoints == {"gpu": gpu, "cpu": cpu}
    assert register_functions(client, path, reregister=True).functions != team.functions


# --------------------------------------------------------------------- doctor
def _report(**changes):
    env = driver_environment()
    report = {**env, "deepmd_kit": "3.2.0", "gpus": ["NVIDIA A100-SXM4-40GB"] * 4,
              "cuda_visible_devices": "0", "torch": "2.11.0"}
    report.update(changes)
    return report


def test_compare_environments_names_each_mismatch_and_fix():
    driver = driver_environment()
    findings = compare_environments(driver, {
        "gpu": _report(python_minor="3.10", python="3.10.4", gpus=[]),
        "cpu": _report(remote_al="0.0.1", deepmd_kit=None),
    }, gpu_pools=["gpu"])
    errors = {(f.pool, f.check) for f in findings if f.level == "error"}
    assert errors == {("gpu", "python"), ("gpu", "gpus"), ("cpu", "remote-al")}
    assert all(f.fix for f in findings if f.level == "error")


def test_compare_environments_all_ok():
    findings = compare_environments(driver_environment(), {"gpu": _report(), "cpu": _report(gpus=[])},
                                    gpu_pools=["gpu"])
    assert [f for f in findings if f.level != "ok"] == []


# ------------------------------------------------------------- a real engine
@pytest.mark.timeout(180)
def test_local_template_engine_runs_json_tasks_and_refuses_pickled_ones(tmp_path, monkeypatch):
    """The engine of the rendered local template, started for real: a task as the service
    delivers it (registered function + JSON arguments) comes back as JSON; pickled
    arguments are refused by the template's allowed_serializers."""
    import sys
    from pathlib import Path

    from globus_compute_common import messagepack
    from globus_compute_common.messagepack.message_types import Task
    from globus_compute_endpoint.engines.base import GCFuture
    from globus_compute_sdk.serialize import ComputeSerializer, JSONData

    from remote_al.functions import probe_environment

    # The engine starts `globus-compute-endpoint python-exec ...` from PATH.
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    rendered = render_template("local", worker_init="true", max_workers_per_node=1)
    engine = load_rendered(rendered.write(tmp_path / "ep")).user.engine
    engine.start(endpoint_id=uuid.uuid4(), run_dir=str(tmp_path / "run"))
    try:
        registration = ComputeSerializer()  # what register_functions stores: dill, by reference
        function_buffer = registration.pack_buffers([registration.serialize(probe_environment)])
        futures = []
        for args_serde in (ComputeSerializer(strategy_data=JSONData()), ComputeSerializer()):
            task_id = uuid.uuid4()
            payload = args_serde.pack_buffers([args_serde.serialize(({},)), args_serde.serialize({})])
            body = messagepack.pack(Task(task_id=task_id, task_buffer=function_buffer + payload))
            futures.append(GCFuture(task_id))
            engine.submit(futures[-1], body, resource_specification={},
                          result_serializers=["globus_compute_sdk.serialize.concretes.JSONData"])
        json_result, pickled = (messagepack.unpack(f.result(timeout=150)) for f in futures)
    finally:
        engine.shutdown()

    assert not json_result.is_error and json_result.data.startswith(JSONData.identifier)
    report = JSONData().deserialize(json_result.data)
    ok = compare_environments(driver_environment(), {"local": report}, gpu_pools=())
    assert [f for f in ok if f.level == "error"] == []
    assert pickled.is_error and "DillDataBase64 disabled" in pickled.data
