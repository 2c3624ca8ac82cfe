"""What every binary shares: user errors become one line and a non-zero exit."""

import errno
import os
import sys

# Quiet TensorFlow's C++ start-up chatter unless the user asked for it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Lines TensorFlow's C++ start-up writes to stderr even at TF_CPP_MIN_LOG_LEVEL=2
# (logged before absl's logging is initialised): known and harmless.
_HARMLESS_STARTUP_LINES = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "oneDNN custom operations are on",
)


def _verbosity_asked():
    """True when the command line asks absl for INFO lines (`--verbosity=N`, N >= 0)."""
    for arg in sys.argv[1:]:
        if arg.startswith("--verbosity="):
            try:
                return int(arg.split("=", 1)[1]) >= 0
            except ValueError:
                return False
    return False


def _import_tensorflow_quietly():
    """Imports TensorFlow with file descriptor 2 sent through a pipe; a thread
    forwards every line as it arrives (so a crash report is never lost) except
    the known harmless ones. `--verbosity=0` or TF_CPP_MIN_LOG_LEVEL=0 keeps all."""
    import threading

    if "tensorflow" in sys.modules or os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0" or _verbosity_asked():
        return
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()

    def forward():
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                if not any(h.encode() in line for h in _HARMLESS_STARTUP_LINES):
                    os.write(saved, line)

    thread = threading.Thread(target=forward, daemon=True)
    thread.start()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)  # the pipe's last writer goes: the thread sees the end
        thread.join(timeout=10)
        os.close(saved)


_import_tensorflow_quietly()

from absl import app  # noqa: E402

from keras_ssl.errors import UserError  # noqa: E402

EXIT_USER_ERROR = 2


EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it
EXIT_TERMINATED = 143  # 128 + SIGTERM

# absl's help flags; absl exits 1 after printing the help they ask for.
_HELP_FLAGS = ("-?", "-h", "--help", "--helpshort", "--helpfull", "--helpxml")


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, `kill`, a container stopping), raised in the main thread
    like Ctrl-C, so the same clean-up runs: a checkpoint being written is removed,
    the completed epochs' checkpoints are kept."""


def _raise_terminated(signum, frame):
    raise Terminated()


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """keras_ssl's own warnings as one `warning: ...` line (Python's default adds
    the file, line number, category and the echoed `warnings.warn(...)` source line);
    other packages' warnings as Python shows them."""
    if issubclass(category, UserWarning) and f"{os.sep}keras_ssl{os.sep}" in filename:
        print(f"warning: {message}", file=file or sys.stderr, flush=True)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


_python_show_warning = None


def _parse_flags(argv):
    """absl's parsing, with a bad flag reported as one `error:` line and exit 2
    (absl's own prints `FATAL Flags parsing error` and exits 1)."""
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        print(f"error: {e}; see --help", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except SystemExit as e:  # absl printed the help that was asked for, then exits 1
        if e.code == 1 and any(arg.split("=", 1)[0] in _HELP_FLAGS for arg in argv[1:]):
            sys.exit(0)
        raise


_OS_HINTS = {
    errno.ENOSPC: "free some space or write elsewhere (--model_dir, --export_root)",
    errno.EDQUOT: "free some space or write elsewhere (--model_dir, --export_root)",
    errno.EACCES: "choose a location you may write to",
    errno.EPERM: "choose a location you may write to",
    errno.EROFS: "the file system is read-only: choose a writable location",
    errno.ENOTDIR: "a file stands where a directory is needed: fix the path",
    errno.EISDIR: "a directory stands where a file is needed: fix the path",
    errno.EEXIST: "something is in the way: fix the path",
}


def describe_os_error(error):
    """One line for an `OSError`: what failed, on which path, and what to do."""
    what = error.strerror or str(error).splitlines()[0]
    where = f": {error.filename}" if error.filename else ""
    hint = _OS_HINTS.get(error.errno)
    if hint is None and "errno = 28" in str(error):  # h5py's wording of ENOSPC
        hint = _OS_HINTS[errno.ENOSPC]
    return f"{what}{where}" + (f"; {hint}" if hint else "")


def check_writable(directory, flag):
    """Raises `UserError` unless files can be created in `directory` (made if missing):
    checked before hours of work, not after."""
    import tempfile

    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-test-"):
            pass
    except OSError as e:
        raise UserError(f"cannot write in {directory} ({describe_os_error(e)}); fix {flag}") from None


def _help_as_the_binary(module_name):
    """Under a console script (`keras-ssl-train`), absl's `--helpshort` and usage
    text look at the script's wrapper module, which defines no flags and has no
    docstring: give it the binary module's key flags and docstring."""
    from absl import flags

    main = sys.argv[0]
    binary = sys.modules.get(module_name)
    if binary is None or main == module_name or main.endswith(module_name.replace(".", "/") + ".py"):
        return
    for flag in flags.FLAGS.get_key_flags_for_module(module_name):
        flags.FLAGS.register_key_flag_for_module(main, flag)
    wrapper = sys.modules.get("__main__")
    if wrapper is not None and not getattr(wrapper, "__doc__", None):
        wrapper.__doc__ = binary.__doc__


def run_main(main, resumable=False):
    """`absl.app.run(main)`: a `UserError` or a bad flag prints `error: <message>`
    (exit 2); Ctrl-C and SIGTERM print one line (exit 130, 143) instead of a
    traceback (`resumable`: the binary checkpoints, and says so); `--help` exits 0;
    keras_ssl's warnings print as `warning: ...`."""
    import signal
    import warnings

    global _python_show_warning
    _help_as_the_binary(main.__module__)
    if _python_show_warning is None:
        _python_show_warning = warnings.showwarning
        warnings.showwarning = _show_warning

    def guarded(argv):
        import logging

        # TF's Python INFO lines (one per collective under multi-worker, several per exported
        # signature through absl's logger) drown the binaries' own lines; --verbosity=0 shows them.
        logging.getLogger("tensorflow").setLevel(logging.WARNING)
        from absl import flags as absl_flags
        from absl import logging as absl_logging

        if not absl_flags.FLAGS["verbosity"].present:
            absl_logging.set_verbosity(absl_logging.WARNING)
        signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            return main(argv)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        except OSError as e:  # the environment: permissions, a full disk, a file in the way
            print(f"error: {describe_os_error(e)}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt as e:
            what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
            kept = ("completed epochs are checkpointed: rerun the same command to resume"
                    if resumable else "nothing half-written is left: rerun the same command")
            print(f"{what}; {kept}", file=sys.stderr)
            sys.exit(EXIT_TERMINATED if isinstance(e, Terminated) else EXIT_INTERRUPTED)

    app.run(guarded, flags_parser=_parse_flags)


def load_run(model_dir):
    """`(config, encoder_path)` of a finished training run, or a UserError
    (`keras_ssl.run_directory.finished_run`)."""
    from keras_ssl.run_directory import finished_run

    return finished_run(model_dir)


_DEFINE = {bool: "DEFINE_boolean", int: "DEFINE_integer", float: "DEFINE_float", str: "DEFINE_string"}


def define_method_flags(flags):
    """One flag per method option, generated from the methods' options
    dataclasses (`keras_ssl.models.registry`): type, help, choices and default
    from the field. An option several methods share (e.g. `margin`) gets one
    flag whose default is None (each method's own default), listed in its help."""
    from keras_ssl.models import registry

    _define_option_flags(flags, {name: [(m.name, m.options, f) for m, f in owners]
                                 for name, owners in registry.option_owners().items()})


def define_setting_flags(flags):
    """One flag per modality setting (`--image_size`, `--augment`, `--audio_seconds`),
    generated from the modalities' settings dataclasses (`keras_ssl.modalities`)
    as the method flags are from the options."""
    from keras_ssl import modalities

    _define_option_flags(flags, {name: [(f"{m.name} methods", m.settings, f) for m, f in owners]
                                 for name, owners in modalities.setting_owners().items()})


def _define_option_flags(flags, owners):
    """`owners`: `{name: [(owner label, dataclass, field), ...]}`; one flag per name."""
    from keras_ssl.options import option_type

    for name, fields in owners.items():
        label, options_class, field = fields[0]
        kind = option_type(options_class, name)
        choices = field.metadata.get("choices")
        if len(fields) == 1:
            default = field.default
            help_text = f"{label}: {field.metadata['help']}"
        else:
            default = None  # each owner's own
            by_help = {}
            for owner, _, f in fields:
                by_help.setdefault(f.metadata["help"], []).append(owner)
            help_text = "; ".join(f"{', '.join(owners_)}: {h}" for h, owners_ in by_help.items())
            help_text += " (default: " + ", ".join(f"{owner} {f.default}" for owner, _, f in fields) + ")"
        if choices:
            flags.DEFINE_enum(name, default, [str(c) for c in choices], help_text)
        else:
            getattr(flags, _DEFINE[kind])(name, default, help_text)
