"""``hcinet exec POD [-n NS] [-c CONTAINER] -- CMD ARGS...``: kubectl exec.

The path is the real one, shortened: kubectl reads the Pod from the API server, the API
server finds the pod's node (``spec.nodeName``) and opens a stream to that node's kubelet,
which runs the command in the container.  Here the CLI reads the Pod through the cluster's
API server (:data:`scenarios.manifests.Api`), finds the node VM (the VM is named as its
Node) and calls its management verb ``pod_exec`` (agents/node/vm.py): a tool of
agents/vm/tools.py (``curl``, ``ping``, ``nc``, ``nslookup``...) in the pod's network
namespace.  Its stdout and stderr are printed as they are; a non-zero exit is kubectl's
``command terminated with exit code N`` on stderr and exit status N.

Refusals are worded as kubectl 1.26, the API server and the kubelet word them:

* no such Pod: ``Error from server (NotFound): pods "web" not found``;
* a Pod in phase Succeeded or Failed (kubectl checks): ``error: cannot exec into a container
  in a completed pod; current phase is Succeeded``;
* ``-c`` naming no container of the Pod (the API server's ``streamLocation``):
  ``Error from server (BadRequest): container x is not valid for pod web``; without ``-c`` the
  first container, with kubectl's ``Defaulted container "a" out of: a, b`` on stderr when the
  Pod has more (``-q`` silences it; the ``kubectl.kubernetes.io/default-container``
  annotation picks another);
* not scheduled: ``Error from server (BadRequest): pod web does not have a host assigned``;
* the node's kubelet does not know the pod: ``error: unable to upgrade connection: pod does
  not exist``; its container is not running yet (Pending, ContainerCreating, an image that
  cannot run there): ``error: unable to upgrade connection: container not found ("web")``;
* the node VM is not running: ``Error from server: error dialing backend: dial tcp
  <InternalIP>:10250: connect: no route to host``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agents import mgmt
from scenarios import aks, cli, runner
from scenarios.manifests import Api, status_error

DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"
KUBELET_PORT = 10250
EXEC_TIMEOUT = 300.0
TERMINAL_PHASES = ("Succeeded", "Failed")


class NodeUnreachable(Exception):
    """The pod's node VM cannot be reached (stopped, crashed, removed)."""


NodeExec = Callable[[str, dict[str, Any]], Awaitable[Mapping[str, Any]]]
"""``node_exec(node, pod_exec_args) -> {rc, stdout, stderr}``; raises
:class:`agents.mgmt.RemoteError` (the node refused) or :class:`NodeUnreachable`."""


@dataclass(frozen=True, slots=True)
class ExecResult:
    """What ``hcinet exec`` prints: the tool's stdout, then on stderr kubectl's notices, the
    tool's stderr and kubectl's closing line, in that order; and the exit status."""

    rc: int
    stdout: str = ""
    stderr: str = ""

    def emit(self) -> int:
        sys.stdout.write(self.stdout)
        sys.stdout.flush()
        sys.stderr.write(self.stderr)
        sys.stderr.flush()
        return self.rc


def _refused(notes: Sequence[str], line: str) -> ExecResult:
    return ExecResult(rc=1, stderr="".join(f"{n}\n" for n in (*notes, line)))


def _containers(pod: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    spec = pod.get("spec") or {}
    names = [str(c.get("name")) for c in spec.get("containers") or [] if isinstance(c, dict)]
    init = [str(c.get("name")) for c in spec.get("initContainers") or [] if isinstance(c, dict)]
    return names, init


def pick_container(pod: Mapping[str, Any], wanted: str, quiet: bool) -> tuple[str, list[str]]:
    """kubectl's ``FindOrDefaultContainerByName`` for exec when ``-c`` is absent; returns the
    container and the notice kubectl prints on stderr.  A ``-c`` is checked by the API server."""
    names, init = _containers(pod)
    if wanted:
        return wanted, []
    annotated = str(((pod.get("metadata") or {}).get("annotations") or {}).get(DEFAULT_CONTAINER_ANNOTATION) or "")
    if annotated and annotated in names + init:
        return annotated, []
    if not names:
        meta = pod.get("metadata") or {}
        raise LookupError(f"error: pod {meta.get('namespace')}/{meta.get('name')} does not have any containers")
    notes = []
    if not quiet and (len(names) > 1 or init):
        every = ", ".join([*names, *(f"{n} (init)" for n in init)])
        notes.append(f'Defaulted container "{names[0]}" out of: {every}')
    return names[0], notes


def _internal_ip(node: Any) -> str:
    for a in ((node or {}).get("status") or {}).get("addresses") or []:
        if isinstance(a, dict) and a.get("type") == "InternalIP":
            return str(a.get("address"))
    return ""


def node_refusal(message: str) -> str:
    """The node's ``pod_exec`` refusal as kubectl shows the kubelet's answer."""
    if message.startswith("pods ") and " not found on node " in message:
        return "error: unable to upgrade connection: pod does not exist"
    if message.startswith(("cannot exec into", "unable to upgrade connection:")):
        return f"error: {message}"
    if message.startswith("container ") and " is not valid for pod " in message:
        return f"Error from server (BadRequest): {message}"
    return f"Error from server: {message}"


async def exec_in_pod(api: Api, node_exec: NodeExec, namespace: str, name: str, argv: Sequence[str], *,
                      stdin: str = "", container: str = "", quiet: bool = False) -> ExecResult:
    """kubectl exec as a whole: the Pod, its node, the tool's output and exit status."""
    status, pod = await api("GET", f"/api/v1/namespaces/{namespace}/pods/{name}", None, None)
    if status >= 400:
        return _refused((), status_error(status, pod))
    phase = str((pod.get("status") or {}).get("phase") or "Pending")
    if phase in TERMINAL_PHASES:
        return _refused((), f"error: cannot exec into a container in a completed pod; current phase is {phase}")
    try:
        chosen, notes = pick_container(pod, container, quiet)
    except LookupError as exc:
        return _refused((), str(exc))
    names, init = _containers(pod)
    if chosen not in names + init:
        return _refused(notes, f"Error from server (BadRequest): container {chosen} is not valid for pod {name}")
    node = str((pod.get("spec") or {}).get("nodeName") or "")
    if not node:
        return _refused(notes, f"Error from server (BadRequest): pod {name} does not have a host assigned")
    args: dict[str, Any] = {"namespace": namespace, "name": name, "argv": list(argv), "container": chosen}
    if stdin:
        args["input"] = stdin
    try:
        reply = await node_exec(node, args)
    except mgmt.RemoteError as exc:
        return _refused(notes, node_refusal(str(exc)))
    except NodeUnreachable:
        _, node_obj = await api("GET", f"/api/v1/nodes/{node}", None, None)
        ip = _internal_ip(node_obj) or node
        return _refused(notes, f"Error from server: error dialing backend: dial tcp {ip}:{KUBELET_PORT}: "
                               "connect: no route to host")
    rc = int(reply.get("rc", 1))
    stderr = "".join(f"{n}\n" for n in notes) + str(reply.get("stderr") or "")
    if rc:
        stderr += f"command terminated with exit code {rc}\n"
    return ExecResult(rc=rc, stdout=str(reply.get("stdout") or ""), stderr=stderr)


# --- the CLI ------------------------------------------------------------------------------------

USAGE = ("expected 'exec (POD | TYPE/NAME) COMMAND [ARG1] [ARG2] ... [ARGN]'. POD or TYPE/NAME is a required "
         "argument for the exec command")


def split_args(args: Sequence[str]) -> tuple[str, list[str], list[str]]:
    """argparse hands POD and everything after it over as they were typed (one REMAINDER
    positional keeps the ``--``, which a separate POD positional would let argparse drop):
    POD, the options between POD and ``--``, and the command after ``--``."""
    if not args or args[0] == "--":
        raise cli.CliError(USAGE)
    head, command = split_command(args[1:])
    return args[0], head, command


def split_command(rest: Sequence[str]) -> tuple[list[str], list[str]]:
    """The options before ``--`` and the command after it; a command without ``--`` is
    refused as kubectl 1.26 refuses it."""
    rest = list(rest)
    if "--" not in rest:
        _, extra = _late_parser().parse_known_args(rest, namespace=argparse.Namespace())
        if extra:  # words that are no option of ours: a command typed without --
            raise cli.CliError("exec [POD] [COMMAND] is not supported anymore. Use exec [POD] -- [COMMAND] instead")
        head, command = rest, []
    else:
        cut = rest.index("--")
        head, command = rest[:cut], rest[cut + 1:]
    if not command:
        raise cli.CliError("you must specify at least one command for the container")
    return head, command


def _stdin_text(ns: argparse.Namespace) -> str:
    return "" if getattr(ns, "no_stdin", False) else cli._stdin_text()


async def _node_exec(ns: argparse.Namespace, timeout: float) -> NodeExec:
    from agents import triozmq

    _, agent = await runner.require_running(ns.deployment)

    async def call(node: str, args: dict[str, Any]) -> Mapping[str, Any]:
        try:
            endpoint = await runner.endpoint_of(agent, node)
        except runner.RunnerError:
            raise NodeUnreachable(node) from None
        async with triozmq.TrioMgmtClient(endpoint) as client:
            reply = await client.call("pod_exec", args, timeout=timeout)
        return dict(reply)

    return call


def add_options(p: argparse.ArgumentParser) -> None:
    """The options, also accepted between POD and ``--`` (kubectl allows them there)."""
    p.add_argument("-n", "--namespace", default=argparse.SUPPRESS, help="the pod's namespace (default: default)")
    p.add_argument("-c", "--container", default=argparse.SUPPRESS,
                   help="the container (default: the first, or the kubectl.kubernetes.io/default-container one)")
    p.add_argument("--cluster", metavar="NAME", default=argparse.SUPPRESS,
                   help="the workload cluster (may be omitted when the deployment has only one)")
    p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                   help="no 'Defaulted container' notice")
    p.add_argument("-i", "--stdin", action="store_true", default=argparse.SUPPRESS,
                   help="accepted for kubectl's sake: standard input is passed unless it is a terminal")
    p.add_argument("-t", "--tty", action="store_true", default=argparse.SUPPRESS,
                   help="accepted for kubectl's sake (there is no terminal: the tools are not interactive)")
    p.add_argument("--no-stdin", action="store_true", default=argparse.SUPPRESS,
                   help="do not pass standard input to the tool")
    p.add_argument("--timeout", type=float, default=argparse.SUPPRESS,
                   help=f"seconds to wait for the tool (default {EXEC_TIMEOUT:g})")


def _late_parser() -> argparse.ArgumentParser:
    late = argparse.ArgumentParser(prog="hcinet exec", add_help=False)
    add_options(late)
    return late


async def cmd_exec(ns: argparse.Namespace) -> int:
    pod, head, command = split_args(ns.args)
    if head:  # options typed between POD and --
        _late_parser().parse_args(head, namespace=ns)
    namespace = getattr(ns, "namespace", None) or "default"
    timeout = float(getattr(ns, "timeout", EXEC_TIMEOUT))
    api = await aks.cluster_api(ns)
    result = await exec_in_pod(api, await _node_exec(ns, timeout), namespace, pod, command,
                               stdin=_stdin_text(ns), container=getattr(ns, "container", None) or "",
                               quiet=bool(getattr(ns, "quiet", False)))
    return result.emit()


def add_parser(sub: Any) -> None:
    p = cli._verb(sub, "exec", cmd_exec, "run a tool in a pod's network namespace (kubectl exec)",
                  "Run a command in a container of a pod, as 'kubectl exec' does: the pod is read from the\n"
                  "cluster's API server, the command runs on its node (spec.nodeName) inside the pod's network\n"
                  "namespace, with the pod's resolv.conf (cluster DNS, search path, ndots:5). The tools are the\n"
                  "emulated ones (curl, ping, nc, nslookup, ...); stdout and stderr are the tool's, and a\n"
                  "non-zero exit prints 'command terminated with exit code N' and exits N. Errors are kubectl's\n"
                  "('Error from server (NotFound): pods \"x\" not found', 'error: unable to upgrade connection:\n"
                  "container not found (\"web\")', ...). Standard input is passed unless it is a terminal.\n\n"
                  "Examples:\n"
                  "  hcinet exec web-7c9 -- curl -s http://backend.prod.svc.cluster.local/hostname\n"
                  "  hcinet exec web-7c9 -n prod -- ping -c 3 10.244.1.5\n"
                  "  hcinet exec web-7c9 -- nslookup backend\n"
                  "  hcinet exec web-7c9 -c client -- nc -z -v 10.96.0.15 80")
    p.usage = "%(prog)s [-n NS] [-c CONTAINER] [--cluster NAME] [options] POD [-n NS] [-c CONTAINER] -- COMMAND [ARGS...]"
    add_options(p)
    # Defaults here, not on the options: the options may also come between POD and -- (parsed
    # again by cmd_exec), where an unset one must not clobber what came before POD.
    p.set_defaults(namespace=None, container=None, cluster=None, quiet=False, stdin=False, tty=False,
                   no_stdin=False, timeout=EXEC_TIMEOUT)
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="POD [OPTIONS] -- COMMAND [ARGS...]",
                   help="the pod's name, then (options and) -- and the command with its arguments")
