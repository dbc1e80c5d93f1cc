"""A Kubernetes API served over real HTTP on 127.0.0.1 for controller tests, built on kmock.

kmock (PyPI ``kmock``, by kopf's author) gives the HTTP server (:class:`kmock.Server`), request
parsing into Kubernetes terms (group, version, plural, namespace, name, subresource, watch), the
request list and the discovery endpoints (``/api``, ``/apis``, ``/version``) of
:class:`kmock.KubernetesScaffold`. Its stateful :class:`kmock.KubernetesEmulator` (0.8) is not
enough for a controller that writes status and scales Deployments, so :class:`KubeApi` keeps
kmock's scaffold and replaces the object handling with a small store of its own (the part kmock
cannot do cleanly, written as plain aiohttp responses in this file). What it adds, listed in
DEVELOPERS.md ("Kubernetes API harness"):

- ``201 Created`` on POST (kmock answers 200), ``metadata.namespace``/``uid``/
  ``creationTimestamp``/``resourceVersion``/``generation`` set on create; ``resourceVersion``
  bumped on every write and ``generation`` on spec changes (not on status writes);
- PUT = replace (kmock does not route PUT at all), PATCH = merge patch or JSON patch
  (``application/json-patch+json``); ``409 Conflict`` when a PUT carries a stale
  ``resourceVersion``, ``409 AlreadyExists`` on a second create, ``404`` as ``Status`` objects;
- the ``/status`` subresource (writes only ``status``) and the ``/scale`` subresource of
  Deployments (GET/PUT/PATCH as ``autoscaling/v1 Scale``; ``status.replicas`` follows
  ``spec.replicas`` at once, there being no pods);
- lists with ``kind: XList`` and ``metadata.resourceVersion``; ``labelSelector`` (``k=v``,
  comma-separated); ``watch=true`` streams of ``ADDED``/``MODIFIED``/``DELETED`` lines
  (existing objects first when no ``resourceVersion`` is given, as the API server does for
  rv ""/"0"; only later events after a list's resourceVersion);
- :attr:`KubeApi.log`: every request as ``(method, path, verb, group, resource, namespace,
  name, user_agent, body)``, ``resource`` with its subresource (``deployments/scale``): the
  RBAC terms;
- :meth:`KubeApi.inject_conflicts`: the next N matching writes answer ``409 Conflict``;
  :meth:`KubeApi.inject_errors`: the next N matching requests (any verb) answer an error status
  (e.g. 500, 503, 429).

Use::

    async with KubeApi() as api, kmock.Server(api) as server:
        base_url = str(server.url)
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import itertools
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock

Obj = dict[str, Any]
Key = tuple[str, str, str, str]  # (group, plural, namespace, name); namespace "" if cluster-scoped


@dataclass(frozen=True)
class LoggedRequest:
    """One request as RBAC sees it: ``verb`` is get/list/watch/create/update/patch/delete."""

    method: str
    path: str
    verb: str
    group: str
    resource: str
    namespace: str
    name: str
    user_agent: str = ""
    body: Any = None


#: plural -> (kind, namespaced) for the resources tests use; unknown ones get a derived kind.
KINDS: dict[str, tuple[str, bool]] = {
    "podautoscalers": ("PodAutoscaler", True),
    "serverlessservices": ("ServerlessService", True),
    "deployments": ("Deployment", True),
    "endpointslices": ("EndpointSlice", True),
    "leases": ("Lease", True),
    "pods": ("Pod", True),
    "services": ("Service", True),
    "namespaces": ("Namespace", False),
    "configmaps": ("ConfigMap", True),
    "revisions": ("Revision", True),
}
#: kind -> plural, for owner references.
PLURALS = {kind: plural for plural, (kind, _) in KINDS.items()}

#: An authorizer: (group, resource with subresource, verb, namespace) -> allowed.
Authorizer = Callable[[str, str, str, str], bool]


def _status(code: int, reason: str, message: str, **details: Any) -> aiohttp.web.Response:
    return aiohttp.web.json_response(
        {
            "apiVersion": "v1",
            "kind": "Status",
            "metadata": {},
            "status": "Failure",
            "code": code,
            "reason": reason,
            "message": message,
            "details": details,
        },
        status=code,
    )


def _merge(target: Obj, patch: Obj) -> Obj:
    """RFC 7386 JSON merge patch."""
    out = copy.deepcopy(target)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _selector_matches(selector: str, labels: dict[str, str]) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k) != v:
                return False
        elif labels.get(term) is None:
            return False
    return True


@attrs.define(kw_only=True)
class KubeApi(kmock.KubernetesScaffold):
    """kmock's Kubernetes scaffold with a store that behaves like the API server (see module)."""

    objects: dict[Key, Obj] = attrs.field(factory=dict, init=False)
    log: list[LoggedRequest] = attrs.field(factory=list, init=False)
    _rv: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    _last_rv: int = attrs.field(default=0, init=False)
    _watchers: list[tuple[str, str, str | None, asyncio.Queue[Obj]]] = attrs.field(
        factory=list, init=False
    )
    _conflicts: list[tuple[str | None, str | None]] = attrs.field(factory=list, init=False)
    _errors_left: list[tuple[int, str | None, str | None, str | None]] = attrs.field(
        factory=list, init=False
    )
    _history: list[tuple[int, str, str, Obj, str]] = attrs.field(factory=list, init=False)
    _compacted_rv: int = attrs.field(default=0, init=False)
    #: user-agent prefix -> the authorizer its requests go through (RBAC and admission).
    authorizers: dict[str, Authorizer] = attrs.field(factory=dict, init=False)
    #: Permissions admission checked on someone's behalf: (user agent, group, resource, verb,
    #: namespace), e.g. update on podautoscalers/finalizers for an ownerRef that blocks deletion.
    admission_checks: list[tuple[str, str, str, str, str]] = attrs.field(factory=list, init=False)

    # -- test-side API --------------------------------------------------------------------

    def inject_conflicts(
        self, n: int, verb: str | None = None, resource: str | None = None
    ) -> None:
        """The next ``n`` writes (matching ``verb``/``resource`` when given; ``resource`` may
        carry a subresource, e.g. ``podautoscalers/status``) answer 409 Conflict."""
        self._conflicts.extend([(verb, resource)] * n)

    def inject_errors(
        self,
        n: int,
        status: int = 500,
        verb: str | None = None,
        resource: str | None = None,
        name: str | None = None,
    ) -> None:
        """The next ``n`` requests matching ``verb``/``resource``/``name`` (when given) answer
        ``status`` with a Kubernetes ``Status`` body."""
        self._errors_left.extend([(status, verb, resource, name)] * n)

    def clear_injected(self) -> None:
        """Forget injected conflicts and errors not yet served."""
        self._conflicts.clear()
        self._errors_left.clear()

    def put_object(self, group: str, plural: str, obj: Obj) -> Obj:
        """Create or replace an object as a test (not a client) does; returns the stored copy."""
        meta = obj.setdefault("metadata", {})
        ns = meta.get("namespace", "default") if KINDS.get(plural, ("", True))[1] else ""
        key = (group, plural, ns, meta["name"])
        old = self.objects.get(key)
        stored = self._stamp(copy.deepcopy(obj), old, ns, spec_changed=True)
        self._store(key, stored, "MODIFIED" if old else "ADDED")
        return copy.deepcopy(stored)

    def delete_object(self, group: str, plural: str, namespace: str, name: str) -> None:
        """Delete an object as a test does (watchers see DELETED)."""
        key = (group, plural, namespace, name)
        if key in self.objects:
            self._last_rv = next(self._rv)
            self._store(key, self.objects[key], "DELETED")

    def get_object(self, group: str, plural: str, namespace: str, name: str) -> Obj | None:
        obj = self.objects.get((group, plural, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def history(self, group: str, plural: str) -> list[Obj]:
        """Every stored version of every object of a resource, oldest first."""
        return [copy.deepcopy(o) for _, g, p, o, _ in self._history if (g, p) == (group, plural)]

    def compact(self) -> None:
        """Forget the event history, as etcd compaction does: a watch from an older
        resourceVersion then gets ``410 Gone`` (an ``ERROR`` event) and must list again."""
        self._compacted_rv = self._last_rv

    def enforce(self, user_agent_prefix: str, authorizer: Authorizer) -> None:
        """Requests whose User-Agent starts with the prefix go through ``authorizer`` (RBAC:
        ``403 Forbidden`` when it says no) and through the OwnerReferencesPermissionEnforcement
        admission plugin: setting ``blockOwnerDeletion`` on an ownerReference needs ``update``
        on the owner's ``finalizers`` subresource."""
        self.authorizers[user_agent_prefix] = authorizer

    def writes(self) -> list[LoggedRequest]:
        """The logged requests that change something."""
        return [r for r in self.log if r.verb in ("create", "update", "patch", "delete")]

    # -- the store ------------------------------------------------------------------------

    def _stamp(self, obj: Obj, old: Obj | None, ns: str, *, spec_changed: bool) -> Obj:
        meta = obj.setdefault("metadata", {})
        if ns:
            meta["namespace"] = ns
        if old is None:
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = datetime.datetime.now(datetime.UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            )
            meta["generation"] = 1
        else:
            for k in ("uid", "creationTimestamp", "generation"):
                meta[k] = old["metadata"].get(k)
            if spec_changed and obj.get("spec") != old.get("spec"):
                meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        self._last_rv = next(self._rv)
        meta["resourceVersion"] = str(self._last_rv)
        return obj

    def _store(self, key: Key, obj: Obj, event: str) -> None:
        group, plural, ns, _ = key
        if event == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        self._history.append((self._last_rv, group, plural, copy.deepcopy(obj), event))
        for w_group, w_plural, w_ns, q in self._watchers:
            if (w_group, w_plural) == (group, plural) and (w_ns is None or w_ns == ns):
                q.put_nowait({"type": event, "object": copy.deepcopy(obj)})

    # -- HTTP -----------------------------------------------------------------------------

    @staticmethod
    def _verb(method: str, name: str | None, params: dict[str, str]) -> str:
        if method == "GET":
            if params.get("watch") in ("true", "1"):
                return "watch"
            return "get" if name else "list"
        return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(
            method, method.lower()
        )

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        res = request.resource
        if res is None or not res.plural:
            return await super()._handle(request)  # discovery: kmock's scaffold answers
        method = str(getattr(request.method, "value", request.method)).upper()
        params = dict(request.params)
        verb = self._verb(method, request.name, params)
        resource = res.plural + (f"/{request.subresource}" if request.subresource else "")
        self.log.append(
            LoggedRequest(
                method=method,
                path=request.url.path,
                verb=verb,
                group=res.group or "",
                resource=resource,
                namespace=request.namespace or "",
                name=request.name or "",
                user_agent=next(
                    (v for k, v in request.headers.items() if k.lower() == "user-agent"), ""
                ),
                body=request.data,
            )
        )
        for i, (e_status, e_verb, e_res, e_name) in enumerate(self._errors_left):
            if (
                e_verb in (None, verb)
                and e_res in (None, resource)
                and e_name
                in (
                    None,
                    request.name,
                )
            ):
                del self._errors_left[i]
                return _status(e_status, "InternalError", f"injected {e_status}: {verb} {resource}")
        user_agent = self.log[-1].user_agent
        refused = self._authorize(user_agent, verb, res.group or "", resource, request)
        if refused is not None:
            return refused
        if verb in ("create", "update", "patch", "delete"):
            for i, (c_verb, c_res) in enumerate(self._conflicts):
                if c_verb in (None, verb) and c_res in (None, resource):
                    del self._conflicts[i]
                    return _status(
                        409,
                        "Conflict",
                        f'Operation cannot be fulfilled on {resource} "{request.name}": the '
                        "object has been modified; please apply your changes to the latest "
                        "version and try again (injected)",
                        name=request.name or "",
                        kind=res.plural,
                    )
        group = res.group or ""
        namespaced = KINDS.get(res.plural, ("", True))[1]
        ns = (request.namespace or "") if namespaced else ""
        if verb == "list":
            return self._list(group, res.plural, request.namespace, res.version or "", params)
        if verb == "watch":
            raw = request._raw_request  # kmock keeps the aiohttp request; streams need it
            assert raw is not None
            return await self._watch(raw, group, res.plural, request.namespace, params)
        if verb == "create":
            return self._create(group, res.plural, ns, request.data)
        assert request.name is not None
        key = (group, res.plural, ns, request.name)
        obj = self.objects.get(key)
        if obj is None:
            return _status(
                404,
                "NotFound",
                f'{res.plural} "{request.name}" not found',
                name=request.name,
                kind=res.plural,
            )
        sub = request.subresource or ""
        if sub == "scale" and res.plural != "deployments":
            return _status(404, "NotFound", f"{res.plural} has no scale subresource here")
        if verb == "get":
            return aiohttp.web.json_response(self._scale_of(obj) if sub == "scale" else obj)
        if verb == "delete":
            self._last_rv = next(self._rv)
            self._store(key, obj, "DELETED")
            return aiohttp.web.json_response(obj)
        if sub not in ("", "status", "scale"):
            return _status(404, "NotFound", f"unknown subresource {sub!r}")
        current = self._scale_of(obj) if sub == "scale" else obj
        if verb == "update":
            new = request.data
            if not isinstance(new, dict):
                return _status(400, "BadRequest", "body must be a JSON object")
            sent_rv = (new.get("metadata") or {}).get("resourceVersion")
            if sent_rv and sent_rv != obj["metadata"]["resourceVersion"]:
                return _status(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {resource} "{request.name}": the object '
                    "has been modified; please apply your changes to the latest version and try "
                    "again",
                    name=request.name,
                    kind=res.plural,
                )
        else:
            ctype = next((v for k, v in request.headers.items() if k.lower() == "content-type"), "")
            try:
                if "json-patch" in ctype:
                    new = jsonpatch.apply_patch(current, json.loads(request.text))
                else:
                    new = _merge(current, request.data or {})
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as e:
                return _status(422, "Invalid", f"patch does not apply: {e}")
        if sub == "scale":
            replicas = int((new.get("spec") or {}).get("replicas", 0))
            updated = copy.deepcopy(obj)
            updated.setdefault("spec", {})["replicas"] = replicas
            updated.setdefault("status", {})["replicas"] = replicas
            stored = self._stamp(updated, obj, ns, spec_changed=True)
            self._store(key, stored, "MODIFIED")
            return aiohttp.web.json_response(self._scale_of(stored))
        if sub == "status":
            updated = copy.deepcopy(obj)
            updated["status"] = copy.deepcopy(new.get("status") or {})
            stored = self._stamp(updated, obj, ns, spec_changed=False)
        else:
            updated = copy.deepcopy(new)
            updated["status"] = copy.deepcopy(obj.get("status") or {})
            meta = updated.setdefault("metadata", {})
            meta["name"] = request.name
            stored = self._stamp(updated, obj, ns, spec_changed=True)
        self._store(key, stored, "MODIFIED")
        return aiohttp.web.json_response(stored)

    def _authorize(
        self, user_agent: str, verb: str, group: str, resource: str, request: kmock.Request
    ) -> aiohttp.web.Response | None:
        """RBAC, then OwnerReferencesPermissionEnforcement, for an enforced user agent."""
        authorize = next(
            (a for prefix, a in self.authorizers.items() if user_agent.startswith(prefix)), None
        )
        if authorize is None:
            return None
        ns = request.namespace or ""
        what = f"{resource}.{group}" if group else resource
        name = f' "{request.name}"' if request.name else ""
        if not authorize(group, resource, verb, ns):
            where = f' in the namespace "{ns}"' if ns else " at the cluster scope"
            return _status(
                403,
                "Forbidden",
                f'{what}{name} is forbidden: User "{user_agent}" cannot {verb} resource '
                f'"{resource}" in API group "{group}"{where}',
            )
        if verb not in ("create", "update") or not isinstance(request.data, dict):
            return None
        old = None
        if verb == "update" and request.name and request.resource is not None:
            old = self.objects.get((group, request.resource.plural, ns, request.name))
        old_refs = {
            (r.get("uid"), bool(r.get("blockOwnerDeletion")))
            for r in ((old or {}).get("metadata") or {}).get("ownerReferences") or []
        }
        for ref in (request.data.get("metadata") or {}).get("ownerReferences") or []:
            if not ref.get("blockOwnerDeletion") or (ref.get("uid"), True) in old_refs:
                continue
            owner_group = str(ref.get("apiVersion", "")).rpartition("/")[0]
            owner_plural = PLURALS.get(str(ref.get("kind")), str(ref.get("kind", "")).lower() + "s")
            finalizers = f"{owner_plural}/finalizers"
            self.admission_checks.append((user_agent, owner_group, finalizers, "update", ns))
            if not authorize(owner_group, finalizers, "update", ns):
                return _status(
                    403,
                    "Forbidden",
                    f"{what}{name} is forbidden: cannot set blockOwnerDeletion if an "
                    "ownerReference refers to a resource you can't set finalizers on: "
                    f'User "{user_agent}" cannot update resource "{finalizers}" in API group '
                    f'"{owner_group}" in the namespace "{ns}"',
                )
        return None

    def _create(self, group: str, plural: str, ns: str, data: Any) -> aiohttp.web.Response:
        if not isinstance(data, dict) or not (data.get("metadata") or {}).get("name"):
            return _status(422, "Invalid", "metadata.name: Required value")
        name = data["metadata"]["name"]
        if (data["metadata"].get("namespace") or ns) != ns and ns:
            return _status(400, "BadRequest", "the namespace of the object does not match the URL")
        key = (group, plural, ns, name)
        if key in self.objects:
            return _status(
                409, "AlreadyExists", f'{plural} "{name}" already exists', name=name, kind=plural
            )
        obj = copy.deepcopy(data)
        obj["metadata"].pop("resourceVersion", None)
        stored = self._stamp(obj, None, ns, spec_changed=True)
        self._store(key, stored, "ADDED")
        return aiohttp.web.json_response(stored, status=201)

    @staticmethod
    def _scale_of(obj: Obj) -> Obj:
        meta = obj["metadata"]
        selector = ((obj.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        return {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {
                "name": meta["name"],
                "namespace": meta.get("namespace", ""),
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
                "creationTimestamp": meta.get("creationTimestamp"),
            },
            "spec": {"replicas": int((obj.get("spec") or {}).get("replicas", 0))},
            "status": {
                "replicas": int((obj.get("status") or {}).get("replicas", 0)),
                "selector": ",".join(f"{k}={v}" for k, v in sorted(selector.items())),
            },
        }

    def _matching(
        self, group: str, plural: str, namespace: str | None, params: dict[str, str]
    ) -> list[Obj]:
        selector = params.get("labelSelector", "")
        return [
            copy.deepcopy(o)
            for (g, p, ns, _), o in sorted(self.objects.items())
            if (g, p) == (group, plural)
            and (namespace is None or ns == namespace)
            and _selector_matches(selector, (o.get("metadata") or {}).get("labels") or {})
        ]

    def _list(
        self, group: str, plural: str, namespace: str | None, version: str, params: dict[str, str]
    ) -> aiohttp.web.Response:
        kind = KINDS.get(plural, (plural[:-1].capitalize(), True))[0]
        return aiohttp.web.json_response(
            {
                "apiVersion": f"{group}/{version}" if group else version,
                "kind": f"{kind}List",
                "metadata": {"resourceVersion": str(self._last_rv)},
                "items": self._matching(group, plural, namespace, params),
            }
        )

    async def _watch(
        self,
        raw: aiohttp.web.BaseRequest,
        group: str,
        plural: str,
        namespace: str | None,
        params: dict[str, str],
    ) -> aiohttp.web.StreamResponse:
        q: asyncio.Queue[Obj] = asyncio.Queue()
        since = params.get("resourceVersion", "")
        selector = params.get("labelSelector", "")
        gone = False
        if since in ("", "0"):
            for o in self._matching(group, plural, namespace, params):
                q.put_nowait({"type": "ADDED", "object": o})
        elif int(since) < self._compacted_rv:
            gone = True  # the API server answers 200, then an ERROR event: 410 Expired
            q.put_nowait(
                {
                    "type": "ERROR",
                    "object": {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Failure",
                        "message": f"too old resource version: {since} ({self._compacted_rv})",
                        "reason": "Expired",
                        "code": 410,
                    },
                }
            )
        else:
            for rv, g, p, o, event in self._history:
                ns = (o.get("metadata") or {}).get("namespace", "")
                if rv > int(since) and (g, p) == (group, plural) and namespace in (None, ns):
                    q.put_nowait({"type": event, "object": copy.deepcopy(o)})
        watcher = (group, plural, namespace, q)
        self._watchers.append(watcher)
        resp = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(raw)
        timeout_s = float(params.get("timeoutSeconds", "3600"))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    event = await asyncio.wait_for(q.get(), timeout=left)
                except TimeoutError:
                    break
                labels = (event["object"].get("metadata") or {}).get("labels") or {}
                if event["type"] != "ERROR" and not _selector_matches(selector, labels):
                    continue
                await resp.write(json.dumps(event).encode() + b"\n")
                if gone:
                    break
        except ConnectionResetError:
            pass  # the client went away
        finally:
            self._watchers.remove(watcher)
        return resp
