"""Property-based test: corrupted or random-header NIfTI files never crash, hang or pass silently.

Every file goes through what the bundle does with a case: the integrity check (:func:`check_case`, reading voxels),
then, for a case it lets through, the ``LoadImaged`` + ``ValidateCased`` head of ``configs/inference.json``'s
preprocessing (with the label, as in ``evaluate.json``). Property: the case is either refused with one line naming
the case and the file (a :class:`CaseError`, reported or raised) or loaded into finite, channel-first data of the
case's shape; no other exception, and no example runs longer than :data:`WALL_CLOCK_LIMIT_S`.
"""

from __future__ import annotations

import gzip
import io
import math
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import CONFIGS
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from monai.bundle import ConfigParser
from monai.transforms import Compose, LoadImaged

from axunet_bundle.data.cases import DEFAULT_MODALITIES, LABEL_SUFFIX, CaseError, find_cases
from axunet_bundle.data.integrity import check_case
from axunet_bundle.data.pipeline import ValidateCased

CASE_ID = "BraTS2021_00000"
SHAPE = (8, 8, 4)  # tiny: the property is about parsing, not size
KINDS = (*DEFAULT_MODALITIES, LABEL_SUFFIX)
LABELS = (0, 1, 2, 4)
#: hypothesis's per-example deadline and the hard wall-clock guard (SIGALRM) that catches a real hang
DEADLINE = timedelta(seconds=5)
WALL_CLOCK_LIMIT_S = 20
#: moderate example counts keep both properties within ~30 s on 2 CPU cores; derandomized for reproducible CI
FUZZ_SETTINGS = settings(
    max_examples=400, deadline=DEADLINE, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
NIFTI1_HEADER_BYTES = 348
INT16 = st.integers(-(2**15), 2**15 - 1)
ODD_FLOATS = st.sampled_from([0.0, -1.0, 1.0, math.nan, math.inf, -math.inf, 1e-30, 3e38])
FLOATS = st.one_of(ODD_FLOATS, st.floats(width=32, allow_nan=True, allow_infinity=True))
#: valid NIfTI-1 type codes and some that are not
DATATYPES = st.sampled_from([2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304, 0, 3, 9999])
#: random values for the header fields the loaders interpret
HEADER_FIELDS = {
    "dim": st.lists(st.one_of(st.integers(-1, 9), INT16), min_size=8, max_size=8),
    "pixdim": st.lists(FLOATS, min_size=8, max_size=8),
    "datatype": DATATYPES,
    "bitpix": st.sampled_from([0, 1, 8, 16, 24, 32, 64, 128, 256, 7]),
    "vox_offset": st.one_of(st.sampled_from([0.0, 348.0, 351.0, 352.0, 353.0, 1e9, -4.0, math.nan]), FLOATS),
    "scl_slope": FLOATS,
    "scl_inter": FLOATS,
    "qform_code": st.one_of(st.integers(-1, 5), INT16),
    "sform_code": st.one_of(st.integers(-1, 5), INT16),
    "quatern_b": FLOATS,
    "quatern_c": FLOATS,
    "quatern_d": FLOATS,
    "qoffset_x": FLOATS,
    "srow_x": st.lists(FLOATS, min_size=4, max_size=4),
    "srow_z": st.lists(FLOATS, min_size=4, max_size=4),
    "magic": st.sampled_from([b"n+1\0", b"ni1\0", b"n+2\0", b"\0\0\0\0"]),
    "sizeof_hdr": st.sampled_from([348, 540, 0, -1]),
}


def _volume(kind: str) -> np.ndarray:
    rng = np.random.default_rng(KINDS.index(kind))
    if kind == LABEL_SUFFIX:
        return rng.choice(LABELS, size=SHAPE).astype(np.uint8)
    return rng.integers(1, 1000, size=SHAPE).astype(np.int16)  # non-zero, finite: a valid modality


def _valid_bytes(kind: str) -> bytes:
    """A valid single-file NIfTI-1 (uncompressed) of this kind of file."""
    img = nib.Nifti1Image(_volume(kind), np.diag([1.0, 1.0, 1.0, 1.0]))
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    return img.to_bytes()


VALID = {kind: _valid_bytes(kind) for kind in KINDS}


def _file_name(kind: str, compressed: bool) -> str:
    return f"{CASE_ID}_{kind}.nii" + (".gz" if compressed else "")


def _pipeline() -> Compose:
    """``LoadImaged`` + ``ValidateCased`` as the training configures them, for images and label."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    steps = [t for t in parser.get_parsed_content("volume_transforms") if isinstance(t, (LoadImaged, ValidateCased))]
    assert len(steps) == 2
    return Compose(steps)


PIPELINE = _pipeline()


@contextmanager
def wall_clock_limit(seconds: int) -> Iterator[None]:
    """Fail an example that runs longer than ``seconds`` (a hang), even inside C code that returns to Python."""

    def expire(signum, frame):
        raise TimeoutError(f"loading took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _case_error(err: BaseException | None) -> CaseError | None:
    """The project's :class:`CaseError` that ``err`` was raised from, if any."""
    while err is not None and not isinstance(err, CaseError):
        err = err.__cause__
    return err


def load_like_the_bundle(kind: str, name: str, content: bytes) -> str:
    """Write a case whose ``kind`` file is ``content``, load it as the bundle does; returns "refused" or "loaded".

    Asserts the property: a refusal names the case and the file; a load gives finite, channel-first data.
    """
    with tempfile.TemporaryDirectory() as tmp, wall_clock_limit(WALL_CLOCK_LIMIT_S):
        folder = Path(tmp) / CASE_ID
        folder.mkdir()
        for other in KINDS:
            if other != kind:
                (folder / _file_name(other, compressed=False)).write_bytes(VALID[other])
        (folder / name).write_bytes(content)
        (case,) = find_cases(tmp, DEFAULT_MODALITIES)  # names only: always the one case

        problems = check_case(case, DEFAULT_MODALITIES, read_voxels=True)
        if problems:
            for problem in problems:
                assert problem.file is not None and problem.reason
                assert str(problem).startswith(f"{CASE_ID}: {problem.file.name}: ")
                assert "\n" not in str(problem)
            # the fuzzed file is blamed, or is the reference that the others' geometry is said to differ from
            assert any(problem.file.name == name or f"from {kind}'s" in problem.reason for problem in problems)
            return "refused"

        item = {"image": case.image_files(DEFAULT_MODALITIES), "label": str(case.label), "case_id": case.case_id}
        try:
            data = PIPELINE(item)
        except Exception as wrapped:  # MONAI's Compose wraps a transform's error in RuntimeError("applying ...")
            err = _case_error(wrapped)
            if err is None:
                raise
            assert err.case_id == CASE_ID and err.file is not None and Path(err.file).name == name, str(err)
            assert "\n" not in str(err)
            return "refused"
        image, label = np.asarray(data["image"]), np.asarray(data["label"])
        assert image.shape == (len(DEFAULT_MODALITIES), *SHAPE) and label.shape == (1, *SHAPE)
        assert np.all(np.isfinite(image)) and np.all(np.isfinite(label))
        return "loaded"


def test_valid_case_loads():
    """The fuzzing starts from files the bundle accepts, so every refusal below is caused by the fuzzing."""
    for kind in KINDS:
        for compressed in (False, True):
            content = gzip.compress(VALID[kind]) if compressed else VALID[kind]
            assert load_like_the_bundle(kind, _file_name(kind, compressed), content) == "loaded"


@st.composite
def corrupted_files(draw) -> tuple[str, str, bytes]:
    """A valid file of one kind, .nii or .nii.gz, with random bytes overwritten and maybe cut short."""
    kind = draw(st.sampled_from(KINDS))
    compressed = draw(st.booleans())
    content = bytearray(gzip.compress(VALID[kind], mtime=0) if compressed else VALID[kind])
    # edits are biased to the start: the NIfTI header, or the gzip header and first deflate block
    positions = st.one_of(st.integers(0, min(len(content), NIFTI1_HEADER_BYTES) - 1), st.integers(0, len(content) - 1))
    for position, value in draw(st.lists(st.tuples(positions, st.integers(0, 255)), max_size=8)):
        content[position] = value
    cut = draw(st.one_of(st.none(), st.integers(0, len(content) - 1)))
    return kind, _file_name(kind, compressed), bytes(content if cut is None else content[:cut])


def with_header_fields(kind: str, compressed: bool, fields: dict) -> tuple[str, str, bytes]:
    """A file of one kind whose header fields are set to ``fields`` as they are, bypassing nibabel's checks."""
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(VALID[kind]))
    for field, value in fields.items():
        header._structarr[field] = value  # raw assignment: nibabel's setters would refuse invalid values
    content = header.binaryblock + VALID[kind][NIFTI1_HEADER_BYTES:]
    return kind, _file_name(kind, compressed), gzip.compress(content, mtime=0) if compressed else content


@st.composite
def random_header_files(draw) -> tuple[str, str, bytes]:
    """A file of one kind whose header fields are set to random (often invalid) values."""
    kind = draw(st.sampled_from(KINDS))
    return with_header_fields(kind, draw(st.booleans()), draw(st.fixed_dictionaries({}, optional=HEADER_FIELDS)))


@FUZZ_SETTINGS
@given(corrupted_files())
def test_corrupted_files_end_in_a_clear_refusal_or_a_valid_load(fuzzed):
    event(load_like_the_bundle(*fuzzed))


@FUZZ_SETTINGS
@given(random_header_files())
# found by this test: MONAI reads the qform when pixdim contradicts the sform, and then refuses to stack affines
# that are not np.allclose, which the check's 1e-3 tolerance let through
@example(with_header_fields("t1ce", False, {"pixdim": [1, 1.00003, 1, 1, 1, 1, 1, 1]}))
@example(with_header_fields("t1ce", False, {"pixdim": [1, 1, 1, 2, 1, 1, 1, 1]}))
# found by this test: finite in nibabel's float64, inf in the float32 the bundle loads
@example(with_header_fields("t2", True, {"scl_slope": 3e38}))
def test_random_headers_end_in_a_clear_refusal_or_a_valid_load(fuzzed):
    event(load_like_the_bundle(*fuzzed))


def test_wall_clock_guard_stops_a_hang():
    """The guard the properties rely on really interrupts a long call."""
    with pytest.raises(TimeoutError):
        with wall_clock_limit(1):
            signal.pause()
