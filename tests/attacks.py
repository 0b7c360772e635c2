"""The red-team catalogue: hostile requests a client can send to ``lieprop serve``, each with the answer it must get.

One list, :data:`ATTACKS`, replayed by tests/test_reliability.py against a real server (every attack, every run of
``make test``) and by benchmarks/reliability.py (the table in docs/BENCHMARKS.md). An attack is data: the HTTP
request and what the server must answer (a status and, for the JSON API, an error code). The universal rules checked
for every attack, whatever it expects, are in :func:`violations`: no 5xx unless the attack expects one, a JSON error
body naming a code on every /v1 error, and an answer within the attack's time limit.

The server these expectations are written for is started by :func:`server_args` (its limits are part of the
contract: ``--max-body-bytes 200000``, ``--max-molecules 64``, an API key, small job quotas).
"""

from __future__ import annotations

import gzip
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: The API key of the server the catalogue is written for.
API_KEY = "reliability-key"
#: A second tenant's key (jobs of one tenant are invisible to the other).
OTHER_KEY = "other-tenant-key"
MAX_BODY_BYTES = 200_000
MAX_MOLECULES = 64
JOB_MAX_ROWS = 500
JOB_MAX_DECOMPRESSED_BYTES = 1 << 20

WATER_XYZ = "3\nwater\nO 0.0 0.0 0.1173\nH 0.0 0.7572 -0.4692\nH 0.0 -0.7572 -0.4692\n"
WATER_ATOMS = {"numbers": [8, 1, 1], "positions": [[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692],
                                                   [0.0, -0.7572, -0.4692]]}


#: The per-molecule cost limit of that server (reference ms, lieprop.model.cost): the 288-frame cage is over it.
MAX_MOLECULE_COST_MS = 500


def c24_cage(jitter: float, seed: int = 0) -> dict:
    """A truncated octahedron of 24 carbons (edges 1.41 Å), each atom moved by ``jitter`` Å (seeded): the less
    jitter, the more symmetric, the more frames (288 up to ~1e-3 Å, 135 at 1e-2 Å). ~100 KB for 64 copies, hours of
    model time without cost admission (tests/test_hostile_input.py, benchmarks/hostile_load.py)."""
    vertices = set()
    for p in itertools.permutations([0.0, 1.0, 2.0]):
        for s1, s2 in itertools.product((1, -1), repeat=2):
            v = np.array(p)
            v[v == 1.0] *= s1
            v[v == 2.0] *= s2
            vertices.add(tuple(v))
    x = np.array(sorted(vertices)) + np.random.default_rng(seed).normal(size=(24, 3)) * jitter
    return {"numbers": [6] * 24, "positions": x.round(6).tolist()}


def server_args() -> list[str]:
    """``lieprop serve`` flags of the server the expectations below hold for (plus --model, --port, --data-dir)."""
    return ["--max-body-bytes", str(MAX_BODY_BYTES), "--max-molecules", str(MAX_MOLECULES),
            "--job-max-rows", str(JOB_MAX_ROWS), "--job-max-decompressed-bytes", str(JOB_MAX_DECOMPRESSED_BYTES),
            "--max-molecule-cost-ms", str(MAX_MOLECULE_COST_MS)]


def server_env() -> dict[str, str]:
    """Environment of that server: two tenants' keys."""
    return {"LIEPROP_API_KEYS": json.dumps({API_KEY: "alice", OTHER_KEY: "bob"})}


@dataclass(frozen=True)
class Attack:
    """One hostile request and the answer it must get.

    ``expect``: the allowed statuses; ``code``: the JSON error code the answer must carry (None: any, or no JSON
    body when the status is not an error); ``item_codes``: for a 200 from /v1/predict, the error code each result
    must carry (None for a result that must be ok); ``timeout``: seconds the answer may take.
    """

    name: str
    area: str  # body | items | paths | auth | uploads | headers
    method: str
    path: str
    expect: tuple[int, ...]
    code: str | None = None
    item_codes: tuple[str | None, ...] | None = None
    timeout: float = 10.0
    authed: bool = True
    request: dict[str, Any] = field(default_factory=dict)  # httpx keyword arguments: content, json, headers, ...


def _predict(name: str, area: str, molecules: list[dict], item_codes: tuple[str | None, ...], **kw: Any) -> Attack:
    return Attack(name, area, "POST", "/v1/predict", (200,), item_codes=item_codes,
                  request={"json": {"molecules": molecules}}, **kw)


def _raw(name: str, body: bytes | str, expect: tuple[int, ...], code: str | None,
         content_type: str = "application/json", path: str = "/v1/predict", **kw: Any) -> Attack:
    data = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    return Attack(name, "body", "POST", path, expect, code,
                  request={"content": data, "headers": {"content-type": content_type}}, **kw)


def _gz(text: str) -> bytes:
    return gzip.compress(text.encode(), compresslevel=9)


def _upload(name: str, filename: str, data: bytes, expect: tuple[int, ...], code: str | None, **params: str) -> Attack:
    return Attack(name, "uploads", "POST", "/v1/jobs", expect, code,
                  request={"files": {"file": (filename, data)}, "params": params})


_POLYYNE = "C1" + "#CC" * 13 + "#C1"  # a 28-ring of alternating triple bonds: ETKDG fails slowly on it

ATTACKS: list[Attack] = [
    # --- bodies the JSON layer must refuse cleanly ---
    _raw("deeply nested JSON (50,000 levels)", '{"molecules": ' + "[" * 50_000 + "]" * 50_000 + "}", (400, 422),
         None),
    # Python's JSON reads NaN and Infinity; such a molecule fails alone, naming its atoms
    _raw("NaN literal in positions", '{"molecules": [{"numbers": [1, 1], "positions": [[0, 0, NaN], [0, 0, 0.74]]}]}',
         (200,), None, item_codes=("invalid_geometry",)),
    _raw("Infinity literal", '{"molecules": [{"numbers": [1, 1], "positions": [[0, 0, Infinity], [0, 0, 1]]}]}',
         (200,), None, item_codes=("invalid_geometry",)),
    _raw("1e999 overflows to inf", '{"molecules": [{"numbers": [1, 1], "positions": [[0, 0, 1e999], [0, 0, 1]]}]}',
         (200,), None, item_codes=("invalid_geometry",)),
    _raw("lone surrogate in a SMILES", '{"molecules": [{"smiles": "C\\ud800C"}]}', (200, 400, 422), None),
    _raw("invalid UTF-8", b'{"molecules": [{"smiles": "C\xff\xfeC"}]}', (400, 422), None),
    _raw("duplicate keys", '{"molecules": [{"smiles": "CC"}], "molecules": [{"smiles": "O"}]}', (422,),
         "invalid_request"),
    _raw("empty body", b"", (400, 422), None),
    _raw("not JSON", "molecules=CCO", (400, 422), None),
    _raw("a JSON array at the top", "[]", (422,), None),
    _raw("JSON null", "null", (422,), None),
    _raw("an integer of 5,000 digits", '{"molecules": [{"numbers": [' + "9" * 5000 + '], "positions": [[0,0,0]]}]}',
         (400, 422), None),
    _raw("body over max_body_bytes", '{"molecules": [{"smiles": "' + "C" * (MAX_BODY_BYTES + 10) + '"}]}', (413,),
         "body_too_large"),
    _raw("JSON sent as text/plain", json.dumps({"molecules": [{"smiles": "CCO"}]}), (200, 415, 422), None,
         content_type="text/plain"),
    Attack("chunked body over max_body_bytes", "body", "POST", "/v1/predict", (413,), "body_too_large",
           request={"content": (b'{"molecules": [{"smiles": "', *[b"C" * 10_000] * 30, b'"}]}'),
                    "headers": {"content-type": "application/json"}}),
    Attack("65 molecules (over max_molecules)", "body", "POST", "/v1/predict", (413,), "too_many_molecules",
           request={"json": {"molecules": [{"smiles": "C"}] * (MAX_MOLECULES + 1)}}),
    Attack("no molecules", "body", "POST", "/v1/predict", (422,), None, request={"json": {"molecules": []}}),
    Attack("an unknown field", "body", "POST", "/v1/predict", (422,), None,
           request={"json": {"molecules": [{"smiles": "C"}], "evil": 1}}),
    Attack("two kinds in one molecule", "body", "POST", "/v1/predict", (422,), None,
           request={"json": {"molecules": [{"smiles": "C", "xyz": WATER_XYZ}]}}),
    Attack("booleans as atomic numbers", "body", "POST", "/v1/predict", (422,), None,
           request={"json": {"molecules": [{"numbers": [True, True], "positions": [[0, 0, 0], [0, 0, 0.74]]}]}}),
    Attack("a position with two coordinates", "body", "POST", "/v1/predict", (422,), None,
           request={"json": {"molecules": [{"numbers": [1], "positions": [[0, 0]]}]}}),
    Attack("an id of 100,000 characters", "body", "POST", "/v1/predict", (422,), None,
           request={"json": {"molecules": [{"id": "x" * 100_000, "smiles": "C"}]}}),
    Attack("coverage 2", "body", "POST", "/v1/predict", (422,), None,
           request={"json": {"molecules": [{"smiles": "C"}], "coverage": 2}}),
    Attack("an unknown property", "body", "POST", "/v1/predict", (422,), "unknown_property",
           request={"json": {"molecules": [{"smiles": "C"}], "properties": ["homo", "'; DROP TABLE jobs;--"]}}),
    Attack("an unknown model", "body", "POST", "/v1/predict", (422,), "unknown_model",
           request={"json": {"molecules": [{"smiles": "C"}], "model": "../../etc/passwd"}}),
    Attack("10,001 atoms in arrays", "body", "POST", "/v1/predict", (413, 422), None,
           request={"json": {"molecules": [{"numbers": [6] * 10_001, "positions": [[0, 0, 0]] * 10_001}]}}),
    # --- items: each bad molecule fails alone, with a code; its neighbours are served ---
    _predict("a 200,000-carbon SMILES beside water", "items", [{"smiles": "C" * 190_000}, WATER_ATOMS],
             ("too_many_atoms", None), timeout=5),
    _predict("a slow-failing polyyne ring beside water", "items", [{"smiles": _POLYYNE}, WATER_ATOMS],
             ("embedding_timeout", None), timeout=20),
    _predict("a symmetric 24-carbon cage (288 frames) beside water", "items", [c24_cage(1e-4), WATER_ATOMS],
             ("too_expensive", None), timeout=5),
    _predict("an unparsable SMILES", "items", [{"smiles": "C1CC(("}, {"smiles": "CCO"}], ("invalid_smiles", None)),
    _predict("atomic number 0 and 200", "items",
             [{"numbers": [0, 1], "positions": [[0, 0, 0], [0, 0, 1]]},
              {"numbers": [200, 1], "positions": [[0, 0, 0], [0, 0, 1]]}, WATER_ATOMS],
             ("unsupported_element", "unsupported_element", None)),
    _predict("atoms on top of each other", "items",
             [{"numbers": [6, 6], "positions": [[0, 0, 0], [0, 0, 0]]}, WATER_ATOMS], ("invalid_geometry", None)),
    _predict("coordinates of 1e30 Å", "items",
             [{"numbers": [6, 1], "positions": [[0, 0, 0], [1e30, 0, 0]]}, WATER_ATOMS], ("invalid_geometry", None)),
    _predict("numbers and positions of different lengths", "items",
             [{"numbers": [6, 1, 1], "positions": [[0, 0, 0]]}, WATER_ATOMS], ("invalid_geometry", None)),
    _predict("an XYZ claiming 10^9 atoms", "items", [{"xyz": "999999999\n\nC 0 0 0\n"}, WATER_ATOMS],
             ("invalid_xyz", None)),
    _predict("an XYZ with nan coordinates", "items", [{"xyz": "1\n\nC nan 0 0\n"}, {"xyz": WATER_XYZ}],
             ("invalid_geometry", None)),
    _predict("an SDF record of garbage", "items", [{"sdf": "\n\n\n999999999999 99 0 0 0 0 V2000\nM  END\n"},
                                                   WATER_ATOMS], ("invalid_sdf", None)),
    _predict("a molecule with 60 atoms", "items", [{"smiles": "CCCCCCCCCCCCCCCCCCCC"}, WATER_ATOMS],
             ("too_many_atoms", None)),
    # --- paths and ids ---
    Attack("path traversal in a job id", "paths", "GET", "/v1/jobs/..%2F..%2F..%2Fetc%2Fpasswd", (404,), None),
    Attack("SQL injection in a job id", "paths", "GET", "/v1/jobs/' OR '1'='1", (404,), None),
    Attack("a job id of 10,000 characters", "paths", "GET", "/v1/jobs/" + "a" * 10_000, (404, 414, 422), None),
    Attack("delete a job that does not exist", "paths", "DELETE", "/v1/jobs/0123456789abcdef", (404,), None),
    Attack("results in an unknown format", "paths", "GET", "/v1/jobs/0123456789abcdef/results",
           (404, 422), None, request={"params": {"format": "../../x"}}),
    Attack("list with limit -1", "paths", "GET", "/v1/jobs", (422,), None, request={"params": {"limit": "-1"}}),
    Attack("list with an SQL state", "paths", "GET", "/v1/jobs", (200, 422), None,
           request={"params": {"state": "queued' OR 1=1 --"}}),
    Attack("an unknown /v1 route", "paths", "GET", "/v1/admin", (404,), None),
    Attack("PUT on /v1/predict", "paths", "PUT", "/v1/predict", (405,), None),
    Attack("a static path escaping its folder", "paths", "GET", "/static/..%2F..%2Fsettings.py", (404,), None),
    # --- the API key ---
    Attack("no API key", "auth", "POST", "/v1/predict", (401,), "unauthorized", authed=False,
           request={"json": {"molecules": [WATER_ATOMS]}}),
    Attack("a wrong API key", "auth", "POST", "/v1/predict", (401,), "unauthorized", authed=False,
           request={"json": {"molecules": [WATER_ATOMS]}, "headers": {"x-api-key": API_KEY[:-1] + "X"}}),
    Attack("an API key of 8,000 characters", "auth", "GET", "/v1/jobs", (401, 431), None, authed=False,
           request={"headers": {"x-api-key": "k" * 8000}}),
    Attack("metrics without a key", "auth", "GET", "/metrics", (401,), "unauthorized", authed=False),
    Attack("a job upload without a key", "auth", "POST", "/v1/jobs", (401,), "unauthorized", authed=False,
           request={"files": {"file": ("a.csv", b"smiles\nCCO\n")}}),
    # --- uploads ---
    _upload("a .gz that is not gzip", "a.csv.gz", b"smiles\nCCO\n", (422,), "invalid_job"),
    # quotas hold once the job runs (the upload itself is small): tests/test_reliability.py follows both jobs
    _upload("a gzip bomb of 2 million rows", "rows.smi.gz", _gz("C\n" * 2_000_000), (202,), None),
    _upload("a gzip bomb of 3 MB in 400 rows", "bytes.smi.gz", _gz(("C" * 8000 + "\n") * 400), (202,), None),
    _upload("a file of unknown format", "a.exe", b"MZ\x90\x00", (422,), "invalid_job"),
    _upload("an unknown job option", "a.csv", b"smiles\nCCO\n", (422,), "invalid_job", evil="1"),
    _upload("an unknown property for a job", "a.csv", b"smiles\nCCO\n", (422,), "unknown_property",
            properties="homo,nope"),
    _upload("a filename with path traversal", "../../../../tmp/evil.csv", b"smiles\nCCO\n", (202,), None),
    Attack("a broken multipart body", "uploads", "POST", "/v1/jobs", (400, 422), None,
           request={"content": b"--x\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc",
                    "headers": {"content-type": "multipart/form-data; boundary=x"}}),
    # --- headers ---
    Attack("100 KB of headers", "headers", "GET", "/healthz", (431,), None,
           request={"headers": {f"x-h{i}": "v" * 1000 for i in range(100)}}),
    Attack("one header of 100 KB on /v1", "headers", "GET", "/v1/models", (431,), "headers_too_large",
           request={"headers": {"x-big": "v" * 100_000}}),
]


def violations(attack: Attack, status: int, headers: dict[str, str], body: bytes, seconds: float) -> list[str]:
    """What is wrong with an answer to ``attack`` (empty when it is right). ``headers``: lower-case names."""
    problems: list[str] = []
    if status not in attack.expect:
        problems.append(f"status {status}, expected one of {attack.expect}: {body[:300]!r}")
    if status >= 500 and status not in attack.expect:
        problems.append(f"a server error {status}")
    if seconds > attack.timeout:
        problems.append(f"took {seconds:.1f} s (limit {attack.timeout} s)")
    is_json = headers.get("content-type", "").startswith("application/json")
    payload: Any = None
    if is_json:
        try:
            payload = json.loads(body)
        except ValueError:
            problems.append("a JSON content-type with a body that is not JSON")
    if status >= 400 and (attack.path.startswith("/v1") or attack.path == "/metrics"):
        code = payload.get("error", {}).get("code") if isinstance(payload, dict) else None
        if not code:
            problems.append(f"a /v1 error without a JSON error code: {body[:200]!r}")
        elif attack.code is not None and code != attack.code:
            problems.append(f"error code {code!r}, expected {attack.code!r}")
        if isinstance(payload, dict) and (not payload.get("request_id")
                                          or payload["request_id"] != headers.get("x-request-id")):
            problems.append("an error without its request id (body and X-Request-ID header)")
    if status == 200 and attack.item_codes is not None and isinstance(payload, dict):
        results = payload.get("results", [])
        if len(results) != len(attack.item_codes):
            problems.append(f"{len(results)} results for {len(attack.item_codes)} molecules")
        for i, (result, want) in enumerate(zip(results, attack.item_codes, strict=False)):
            got = None if result.get("ok") else result.get("error", {}).get("code")
            if got != want:
                problems.append(f"molecule {i}: {got or 'ok'}, expected {want or 'ok'}")
            if not result.get("ok") and len(result.get("error", {}).get("message", "")) > 1000:
                problems.append(f"molecule {i}: an error message of {len(result['error']['message'])} characters")
    return problems


def request_kwargs(attack: Attack) -> dict[str, Any]:
    """The httpx keyword arguments of ``attack``, with the API key when it is an authenticated one. A ``content``
    given as a tuple of byte chunks is sent chunked (no Content-Length), as a fresh generator on every call."""
    kw = dict(attack.request)
    headers = dict(kw.pop("headers", {}))
    if attack.authed:
        headers.setdefault("x-api-key", API_KEY)
    kw["headers"] = headers
    if isinstance(kw.get("content"), tuple):
        kw["content"] = iter(kw["content"])
    return kw
