"""Route nnunetv2's print statements into `logging` (debug level) so our console stays readable."""
from __future__ import annotations

import contextlib
import io
import logging
from typing import Iterator


@contextlib.contextmanager
def nnunet_output_to_log(logger: logging.Logger, level: int = logging.DEBUG) -> Iterator[None]:
    """Capture stdout inside the block and log it line by line afterwards.

    Args:
        logger: where the captured lines go.
        level: their log level.
    """
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield
    finally:
        for line in buffer.getvalue().splitlines():
            if line.strip():
                logger.log(level, "nnunetv2: %s", line)
