"""What the Globus backend sends and reads: JSON serialization, task documents, errors.

Arguments and results travel as JSON (``JSONData``); a result whose header is not JSON is
refused before deserialization. The service's task documents become results or the
driver's errors (``TaskFailed``, ``FunctionNotAllowed``), and globus_sdk errors become
``BackendUnavailable``, ``ConfigError`` or ``TaskFailed`` by status and code.
"""

from __future__ import annotations

import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from driver.errors import BackendUnavailable, ConfigError, FunctionNotAllowed, TaskFailed

# Error codes after which running the same task again cannot help.
NOT_RETRYABLE = {"FUNCTION_NOT_ALLOWED", "MaxResultSizeExceeded", "ResultNotJSON"}


@dataclass
class Pending:
    """A task the backend waits for: where it runs, what it is, its future and last status."""

    pool: str
    function: str
    task_key: str
    future: Future
    status: str = "submitted"


def json_serializer():
    """Arguments and results as JSON; only JSON data is deserialized."""
    from globus_compute_sdk.serialize import ComputeSerializer, DillCode, JSONData

    # An allow-list needs a code entry too; results are checked to be JSON before this.
    return ComputeSerializer(strategy_data=JSONData(), allowed_deserializer_types=[JSONData, DillCode])


def json_import_path() -> str:
    from globus_compute_sdk.serialize import JSONData

    return f"{JSONData.__module__}.{JSONData.__qualname__}"


def translate_error(err: Exception, pool: str, endpoint_id: str) -> Exception:
    """Map a Globus network or API error to the driver's errors (by status and code)."""
    import globus_sdk

    if not isinstance(err, globus_sdk.GlobusAPIError):
        return BackendUnavailable(f"Globus Compute unreachable ({type(err).__name__}): {err}")
    status, code = err.http_status, (err.code or "")
    if status == 403 and code == "FUNCTION_NOT_PERMITTED":
        return FunctionNotAllowed(not_allowed_message(pool, endpoint_id, err.message))
    if status == 429 or status >= 500:
        return BackendUnavailable(f"Globus Compute answered {status} {code}; retry later")
    if status in (401, 403):
        return ConfigError(
            f"team.endpoints.{pool}", f"not allowed to use endpoint {endpoint_id} "
            f"({status} {code}: {err.message})",
            "log in as an identity the endpoint accepts, or set GLOBUS_COMPUTE_CLIENT_ID/"
            "GLOBUS_COMPUTE_CLIENT_SECRET to the team's service identity (docs/sharing.md)")
    if status == 404:
        return ConfigError(f"team.endpoints.{pool}", f"the service does not know endpoint "
                           f"{endpoint_id} or a function id ({err.message})",
                           "check the team file; re-register with remote-al endpoint register")
    return TaskFailed(f"Globus Compute refused the request ({status} {code}): {err.message}",
                      code=code or f"HTTP{status}", retryable=False)


def decode_result(serializer, task_id: str, entry: Pending, doc: Mapping[str, Any]) -> dict:
    """The JSON result dict of a successful task document; TaskFailed if it is not JSON."""
    from globus_compute_sdk.serialize import JSONData

    payload = doc.get("result")
    if not isinstance(payload, str) or not payload.startswith(JSONData.identifier):
        raise TaskFailed(
            f"{entry.function} task {task_id} ({entry.task_key}): the result is not JSON; "
            "the driver does not unpickle remote data. Use a globus-compute-endpoint that "
            "honours result_serializers and functions that return plain dicts",
            code="ResultNotJSON", retryable=False)
    try:
        value = serializer.deserialize(payload)
    except Exception as err:
        raise TaskFailed(f"{entry.function} task {task_id}: unreadable JSON result: {err}",
                         code="ResultNotJSON", retryable=False) from err
    if not isinstance(value, dict):
        raise TaskFailed(f"{entry.function} task {task_id} returned {type(value).__name__}, "
                         "not a dict", code="ResultNotJSON", retryable=False)
    return value

def task_failure(task_id: str, entry: Pending, doc: Mapping[str, Any], endpoint_id: str) -> TaskFailed:
    """The driver's error of a failed task document (FunctionNotAllowed for a refusal)."""
    details = doc.get("details") if isinstance(doc.get("details"), Mapping) else {}
    error = doc.get("error_details") if isinstance(doc.get("error_details"), Mapping) else {}
    code = str(error.get("code") or "RemoteExecutionError")
    text = str(doc.get("exception") or doc.get("reason") or "no error text from the service")
    # The endpoint marks its refusal with error code FUNCTION_NOT_ALLOWED and the
    # refused function and endpoint ids (fid, eid) in the result details.
    if code == "FUNCTION_NOT_ALLOWED" or {"fid", "eid"} <= set(details):
        eid = str(details.get("eid") or endpoint_id)
        return FunctionNotAllowed(not_allowed_message(entry.pool, eid, text))
    return TaskFailed(f"{entry.function} task {task_id} ({entry.task_key}) failed on the "
                      f"{entry.pool} endpoint:\n{text}", code=code, retryable=code not in NOT_RETRYABLE)


def not_allowed_message(pool: str, endpoint_id: str, text: str) -> str:
    return (f"the {pool} endpoint {endpoint_id} refuses this function ({text.strip()}). Its "
            "allowed_functions do not list the team file's function ids: re-render its config "
            "with `remote-al endpoint render ... --team team.toml` and restart it, or, if the "
            "functions were re-registered, share the new team file")


def as_json_ready(request: Any) -> Any:
    if hasattr(request, "to_dict"):
        return request.to_dict()
    if isinstance(request, Mapping):
        return dict(request)
    return request


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def chunks_by_size(prepared: Iterable[tuple], limit: int) -> Iterable[list]:
    chunk: list = []
    total = 0
    for item in prepared:
        size = item[-1]
        if chunk and total + size > limit:
            yield chunk
            chunk, total = [], 0
        chunk.append(item)
        total += size
    if chunk:
        yield chunk
