"""What every command line shares: the XLA:CPU setting before the first computation, and one mapping from
failures to exit codes and one-line messages.

Exit codes (the same for ``train.*``, ``eval.*``, ``medfusion_jax.convert`` and ``medfusion_jax.data``):

* 0: done;
* 1 (:data:`EXIT_FAILED`): the work ran and its result is a failure (a non-finite loss, a parity check
  that does not hold, a data set with faults);
* 2 (:data:`EXIT_USAGE`): bad input: a flag, a file, a field of a file, a folder that does not fit,
  reported as ``error: ...`` naming it, first line first (a message may list details below it, e.g.
  every mismatching key of a checkpoint); argparse's own flag errors are 2 as well;
* 130 (:data:`EXIT_INTERRUPTED`): Ctrl-C; what was saved stays (training checkpoints, sample images).

Input errors are the ``ValueError``/``OSError`` family (every error class of this package derives
from ``ValueError``; :class:`~medfusion_jax.data.errors.DataError` is caught too) and
:class:`CommandError`. Anything else is a bug and keeps its traceback. ``MEDFUSION_JAX_TRACEBACK=1``
shows the traceback of input errors too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from medfusion_jax.data.errors import DataError
from medfusion_jax.xla_cpu import apply_cpu_defaults

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
TRACEBACK = "MEDFUSION_JAX_TRACEBACK"


class CommandError(Exception):
    """A failure to report in one line (the message names the flag, file or field) with an exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE):
        super().__init__(message)
        self.exit_code = exit_code


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def run(body: Callable[[], int | None], *, prog: str | None = None) -> int:
    """Apply the CPU setting, call ``body()``, and turn its failures into (message, exit code).

    ``body`` returns an exit code (None: 0). Messages go to stderr as ``error: ...``; ``prog`` names
    the command in the interruption message. A process of a multi-process job that fails leaves the job
    without hanging (:func:`medfusion_jax.mesh.leave_job`).
    """
    try:
        code = _run(body, prog)
    except SystemExit as err:
        if _in_job():
            _leave_job(err.code if isinstance(err.code, int) else EXIT_FAILED)
        raise
    except BaseException:  # a bug (its traceback first) or an input error shown with its traceback
        if _in_job():
            import traceback

            traceback.print_exc()
            _leave_job(EXIT_FAILED)
        raise
    if code != EXIT_OK and _in_job():
        _leave_job(code)
    return code


def _in_job() -> bool:
    mesh = sys.modules.get("medfusion_jax.mesh")  # only a command that joined a job has imported it
    return mesh is not None and mesh.in_job()


def _leave_job(code: int) -> None:
    sys.modules["medfusion_jax.mesh"].leave_job(code)


def _run(body: Callable[[], int | None], prog: str | None) -> int:
    apply_cpu_defaults()
    show_traceback = os.environ.get(TRACEBACK, "0") not in ("", "0")
    try:
        code = body()
    except KeyboardInterrupt:
        print(f"{prog or 'command'}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except CommandError as err:
        if show_traceback:
            raise
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except (ValueError, OSError, DataError) as err:
        if show_traceback:
            raise
        print(f"error: {str(err).strip() or type(err).__name__}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK if code is None else int(code)


def add_multihost_flags(parser) -> None:
    """The flags that join a multi-process job, the same for every command that can run as one. All are
    global (the same on every process) except ``--process-id``."""
    from medfusion_jax.mesh import HEARTBEAT_TIMEOUT, INIT_TIMEOUT

    dist = parser.add_argument_group("multi-host (every flag is the same on all processes but --process-id)")
    dist.add_argument("--coordinator-address", help="host:port of process 0 (with --num-processes, --process-id)")
    dist.add_argument("--num-processes", type=int, help="processes in the job (global)")
    dist.add_argument("--process-id", type=int, help="this process's index, 0..N-1 (per process)")
    dist.add_argument("--distributed", action="store_true",
                      help="join a multi-process run configured by the cluster's environment (SLURM, TPU, ...)")
    dist.add_argument("--init-timeout", type=int, default=INIT_TIMEOUT,
                      help="seconds to wait for every process to join before giving up with a message (global)")
    dist.add_argument("--heartbeat-timeout", type=int, default=HEARTBEAT_TIMEOUT,
                      help="seconds without a sign of life after which a process counts as lost and the job "
                           "ends on every process (global; JAX's default 100)")


def join_job(args) -> None:
    """Join the multi-process job that the flags of :func:`add_multihost_flags` describe (if any), then
    check that every process was started with the same flags (all but ``--process-id``): a difference
    stops every process, naming the flags and each process's value."""
    from medfusion_jax.mesh import check_same_on_every_process, initialize_distributed

    initialize_distributed(args.coordinator_address, args.num_processes, args.process_id,
                           from_environment=args.distributed, timeout=args.init_timeout,
                           heartbeat_timeout=args.heartbeat_timeout)
    flags = {"--" + k.replace("_", "-"): v for k, v in vars(args).items() if k != "process_id"}
    check_same_on_every_process(flags, "flags")
