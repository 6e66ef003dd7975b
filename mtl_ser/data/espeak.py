"""A minimal ctypes binding to libespeak-ng, as shipped by the `espeakng-loader` wheel.

Only what the demo corpus needs: pick a voice, set rate/pitch/range/volume and
synthesise one text to a float32 waveform.

Why each call loads a fresh library instance: espeak-ng keeps synthesis state in C
statics that no API call resets (the pitch-flutter phase, the automatic gain, the
roughness cycle counter), so the same request gives different samples depending on
what was synthesised before in the process. The library is therefore copied once per
process to a private file, and every `synthesize` call dlopens that copy, initialises
it (about 1 ms), synthesises and dlcloses it. The private copy also keeps us apart from
any other user of the wheel's library in the same process.
"""

from __future__ import annotations

import _ctypes
import atexit
import ctypes
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np

# espeak_AUDIO_OUTPUT: synthesise inside espeak_Synth and hand samples to our callback.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
# Initialisation option: report a missing data file as an error instead of exit().
_INITIALIZE_DONT_EXIT = 0x8000
# espeak_PARAMETER ids.
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4
# espeak_Synth arguments: positions count characters; the text is UTF-8.
_POS_CHARACTER = 1
_CHARS_UTF8 = 1

# Unloads a shared library (dlclose on POSIX, FreeLibrary on Windows).
_unload = getattr(_ctypes, "dlclose", None) or _ctypes.FreeLibrary

# int callback(short *wav, int numsamples, espeak_EVENT *events); 0 means "go on".
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)

INSTALL_HINT = (
    "The demo corpus is synthesised with espeak-ng from the `espeakng-loader` wheel; "
    "install it with `pip install espeakng-loader` (or run `make setup`)."
)


class EspeakError(RuntimeError):
    """Raised when libespeak-ng cannot be loaded or refuses a request."""


def wheel_paths() -> tuple[Path, Path]:
    """Return (libespeak-ng shared library, espeak-ng-data folder) of the installed wheel.

    Raises EspeakError, with installation instructions, when the wheel is missing.
    """
    try:
        import espeakng_loader
    except ImportError as err:
        raise EspeakError(f"cannot import espeakng_loader. {INSTALL_HINT}") from err
    try:
        library = Path(espeakng_loader.get_library_path())
        data = Path(espeakng_loader.get_data_path())
    except RuntimeError as err:
        raise EspeakError(f"espeakng_loader is incomplete: {err}. {INSTALL_HINT}") from err
    if not library.is_file():
        raise EspeakError(f"libespeak-ng not found at {library}. {INSTALL_HINT}")
    return library, data


class _Engine:
    """Process-wide bookkeeping: the private library copy, the data path, a lock."""

    def __init__(self) -> None:
        library, data = wheel_paths()
        self.data_path = str(data).encode()
        self._tmpdir = tempfile.mkdtemp(prefix="mtl_ser_espeak_")
        atexit.register(shutil.rmtree, self._tmpdir, True)
        self.library_copy = str(Path(self._tmpdir) / library.name)
        shutil.copy2(library, self.library_copy)
        self.lock = threading.Lock()
        self.chunks: list[np.ndarray] = []
        # Keep a reference: ctypes frees the trampoline when the Python object dies.
        self.callback = _SYNTH_CALLBACK(self._collect)

    def _collect(self, wav, numsamples, _events) -> int:
        """Synth callback: copy `numsamples` int16 samples (wav is NULL at the end)."""
        if wav and numsamples > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
        return 0

    def open(self) -> tuple[ctypes.CDLL, int]:
        """dlopen and initialise a fresh library instance; returns it and its sample rate."""
        try:
            lib = ctypes.CDLL(self.library_copy)
        except OSError as err:
            raise EspeakError(f"cannot load libespeak-ng: {err}. {INSTALL_HINT}") from err
        _declare_signatures(lib)
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, self.data_path, _INITIALIZE_DONT_EXIT
        )
        if rate <= 0:
            self.close(lib)
            raise EspeakError(f"espeak_Initialize failed (data {self.data_path!r}). {INSTALL_HINT}")
        lib.espeak_SetSynthCallback(self.callback)
        return lib, rate

    @staticmethod
    def close(lib: ctypes.CDLL) -> None:
        """Terminate and unload a library instance so the next open starts clean."""
        lib.espeak_Terminate()
        _unload(lib._handle)


def _declare_signatures(lib: ctypes.CDLL) -> None:
    """Give ctypes the C prototypes of the few functions used."""
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [
        ctypes.c_char_p,  # text
        ctypes.c_size_t,  # size in bytes, including the terminating NUL
        ctypes.c_uint,  # start position
        ctypes.c_int,  # position type
        ctypes.c_uint,  # end position (0: none)
        ctypes.c_uint,  # flags
        ctypes.c_void_p,  # unique identifier (out, unused)
        ctypes.c_void_p,  # user data
    ]
    lib.espeak_Info.argtypes = [ctypes.c_void_p]
    lib.espeak_Info.restype = ctypes.c_char_p


def _check(status: int, what: str) -> None:
    """Raise EspeakError when an espeak call returned a non-zero status."""
    if status != 0:
        raise EspeakError(f"{what} failed with espeak status {status}")


_ENGINE: _Engine | None = None
_ENGINE_LOCK = threading.Lock()


def _engine() -> _Engine:
    """Return the process-wide engine, copying the library on first use."""
    global _ENGINE
    with _ENGINE_LOCK:
        if _ENGINE is None:
            _ENGINE = _Engine()
        return _ENGINE


def espeak_version() -> str:
    """Return the version string of libespeak-ng (e.g. "1.52.0")."""
    engine = _engine()
    with engine.lock:
        lib, _ = engine.open()
        try:
            return lib.espeak_Info(None).decode()
        finally:
            engine.close(lib)


def synthesize(
    text: str,
    voice: str = "en",
    rate: int = 175,
    pitch: int = 50,
    pitch_range: int = 50,
    volume: int = 100,
) -> tuple[np.ndarray, int]:
    """Speak `text` with espeak-ng; the same arguments always give the same samples.

    Takes the voice name (a language plus an optional variant, e.g. "en-us+m3"), the
    rate in words per minute (80-450), the base pitch and the pitch range (0-100, 50 is
    the voice's default) and the volume (0-200, 100 is normal).
    Returns (mono float32 samples in [-1, 1), the library's sample rate: 22050 Hz).
    Raises EspeakError for an unknown voice or a synthesis failure.
    """
    engine = _engine()
    with engine.lock:
        lib, sample_rate = engine.open()
        try:
            _check(lib.espeak_SetVoiceByName(voice.encode()), f"voice {voice!r}")
            # Parameters are set after the voice, since selecting a voice resets them.
            for param, value in (
                (_RATE, rate),
                (_PITCH, pitch),
                (_RANGE, pitch_range),
                (_VOLUME, volume),
            ):
                _check(lib.espeak_SetParameter(param, int(value), 0), "espeak_SetParameter")
            engine.chunks = []
            data = text.encode("utf-8") + b"\0"
            status = lib.espeak_Synth(
                data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
            )
            _check(status, "espeak_Synth")
            _check(lib.espeak_Synchronize(), "espeak_Synchronize")
            samples = engine.chunks
            engine.chunks = []
        finally:
            engine.close(lib)
    if not samples:
        return np.zeros(0, dtype=np.float32), sample_rate
    return np.concatenate(samples).astype(np.float32) / 32768.0, sample_rate
