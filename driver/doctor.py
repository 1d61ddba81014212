"""``remote-al endpoint doctor``: probe every endpoint and compare it with the driver.

:func:`doctor` probes every endpoint with the registered ``probe`` function and lists
what differs from the driver, each finding with the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from driver.errors import BackendUnavailable, RemoteALError
from driver.team import TeamFile, driver_environment, read_team

if TYPE_CHECKING:
    from driver.backends.globus import GlobusBackend


@dataclass(frozen=True)
class Finding:
    level: str  # "ok", "warning" or "error"
    check: str  # e.g. "python", "gpus", "endpoint-status"
    message: str
    fix: str = ""
    pool: str | None = None

    def __str__(self) -> str:
        where = f"[{self.pool}] " if self.pool else ""
        text = f"{self.level.upper():7s} {where}{self.check}: {self.message}"
        return text + (f"\n        fix: {self.fix}" if self.fix else "")


def _minor(version: str | None) -> str | None:
    return ".".join(version.split(".")[:2]) if version else None


def compare_environments(
    driver: Mapping[str, Any], reports: Mapping[str, Mapping[str, Any]], gpu_pools: Iterable[str] = ("gpu",)
) -> list[Finding]:
    """Findings from the driver's versions and each pool's ``probe_environment`` dict."""
    found: list[Finding] = []
    reinstall = "pip install 'remote-al[endpoint]==<driver's version>' in the endpoint environment"
    for pool, rep in reports.items():
        def add(level, check, message, fix=""):
            found.append(Finding(level, check, message, fix, pool))

        ep_py = rep.get("python_minor") or _minor(rep.get("python"))
        if ep_py != driver["python_minor"]:
            add("error", "python", f"endpoint runs Python {ep_py}, driver {driver['python_minor']}: "
                "functions and arguments are pickled per minor version",
                f"build the endpoint environment with Python {driver['python_minor']} "
                f"(or run the driver with Python {ep_py})")
        else:
            add("ok", "python", f"Python {ep_py} on both sides")
        if rep.get("remote_al") != driver["remote_al"]:
            add("error", "remote-al", f"endpoint has remote-al {rep.get('remote_al')}, driver "
                f"{driver['remote_al']}", reinstall)
        else:
            add("ok", "remote-al", f"remote-al {driver['remote_al']} on both sides")
        if rep.get("dill") != driver["dill"]:
            add("error", "dill", f"endpoint has dill {rep.get('dill')}, driver {driver['dill']}: "
                "the registered functions are dill pickles",
                f"pip install dill=={driver['dill']} in the endpoint environment (or match the driver)")
        else:
            add("ok", "dill", f"dill {driver['dill']} on both sides")
        ep_gc = rep.get("globus_compute_endpoint") or rep.get("globus_compute_sdk")
        if _minor(ep_gc) != _minor(driver.get("globus_compute_sdk")):
            add("warning", "globus-compute", f"endpoint has globus-compute {ep_gc}, driver SDK "
                f"{driver.get('globus_compute_sdk')}",
                "install the same globus-compute-sdk/-endpoint minor version on both sides")
        else:
            add("ok", "globus-compute", f"globus-compute {ep_gc}")
        ep_dp = rep.get("deepmd_kit")
        if pool in gpu_pools and not ep_dp:
            add("error", "deepmd-kit", "deepmd-kit is not installed in the endpoint environment",
                "pip install 'remote-al[endpoint]' in the environment that worker_init activates")
        elif driver.get("deepmd_kit") and ep_dp and _minor(ep_dp) != _minor(driver["deepmd_kit"]):
            add("warning", "deepmd-kit", f"endpoint has deepmd-kit {ep_dp}, driver {driver['deepmd_kit']}",
                "use one deepmd-kit version so models trained remotely load locally")
        elif ep_dp:
            add("ok", "deepmd-kit", f"deepmd-kit {ep_dp}")
        if pool in gpu_pools:
            gpus = rep.get("gpus") or []
            if not gpus:
                add("error", "gpus", f"no GPU visible to the worker (CUDA_VISIBLE_DEVICES="
                    f"{rep.get('cuda_visible_devices')!r}, torch {rep.get('torch')})",
                    "check the template's available_accelerators / select ngpus, that worker_init "
                    "loads the CUDA module, and that torch is a CUDA build")
            else:
                add("ok", "gpus", f"{len(gpus)} visible: {', '.join(map(str, gpus))}")

    dp = {p: r.get("deepmd_kit") for p, r in reports.items() if r.get("deepmd_kit")}
    if len(set(dp.values())) > 1:
        found.append(Finding("warning", "deepmd-kit", f"pools differ: {dp}",
                             "install one deepmd-kit version on every endpoint"))
    return found


def doctor(
    team: TeamFile | str | Path,
    client=None,
    *,
    backend: GlobusBackend | None = None,
    timeout_s: float = 600.0,
    driver: Mapping[str, Any] | None = None,
) -> list[Finding]:
    """Check every endpoint of the team file; return findings, each with its fix.

    Asks each endpoint's status and allow-list, runs the registered ``probe`` function on
    it and compares versions with the driver's (:func:`compare_environments`). A probe
    still queued after ``timeout_s`` (a batch job waiting for nodes) is reported, not
    waited for.
    """
    from concurrent.futures import wait

    from driver.backends.globus import GlobusBackend

    team = team if isinstance(team, TeamFile) else read_team(team)
    backend = backend or GlobusBackend(team, meta={}, client=client)
    found: list[Finding] = []
    futures = {}
    try:
        for pool in team.endpoints:
            try:
                status = backend.endpoint_status(pool)
            except RemoteALError as err:
                found.append(Finding("error", "endpoint-status", str(err), pool=pool))
                continue
            if status != "online":
                found.append(Finding("error", "endpoint-status", f"endpoint {team.endpoints[pool]} "
                                     f"is {status}", "on the cluster: globus-compute-endpoint start <name>",
                                     pool))
                continue
            found.append(Finding("ok", "endpoint-status", "online", pool=pool))
            found.extend(_check_allowlist(backend, team, pool))
            try:
                futures[pool] = backend.submit(pool, "probe", {}, task_key=f"doctor-{pool}").future
            except (BackendUnavailable, RemoteALError) as err:
                found.append(Finding("error", "probe", str(err), pool=pool))
        done, not_done = wait(list(futures.values()), timeout=timeout_s)
        reports = {}
        for pool, fut in futures.items():
            if fut in not_done:
                found.append(Finding("warning", "probe", f"no answer after {timeout_s:.0f} s (the "
                                     "endpoint may be waiting for a batch job)",
                                     "rerun doctor once the job runs; check `qstat`/`squeue`", pool))
            elif fut.exception() is not None:
                found.append(Finding("error", "probe", str(fut.exception()), pool=pool))
            else:
                reports[pool] = fut.result()
        gpu_pools = [p for p in team.endpoints if p.startswith("gpu")]
        found.extend(compare_environments(driver or driver_environment(), reports, gpu_pools))
    finally:
        backend.shutdown()
    return found


def _check_allowlist(backend: GlobusBackend, team: TeamFile, pool: str) -> list[Finding]:
    try:
        allowed = backend.allowed_functions(pool)
    except RemoteALError as err:
        return [Finding("warning", "allowed-functions", f"could not read: {err}", pool=pool)]
    if allowed is None:
        return [Finding("warning", "allowed-functions", "the endpoint runs any function",
                        "render its config with --team team.toml (allowed_functions) and restart it",
                        pool)]
    missing = sorted(n for n, fid in team.functions.items() if fid not in allowed)
    if missing:
        level = "error" if "probe" in missing else "warning"
        return [Finding(level, "allowed-functions", f"the endpoint refuses {missing} of this team "
                        "file (tasks of these sent to this pool will fail)",
                        "remote-al endpoint render ... --team team.toml -o ~/.globus_compute/<name>, then "
                        "globus-compute-endpoint restart <name>", pool)]
    return [Finding("ok", "allowed-functions", "all team functions allowed", pool=pool)]
