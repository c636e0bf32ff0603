"""Parsing of image sizes given on the command line or in the API (``1024``, ``"2048x1536"``, pairs)."""

from __future__ import annotations

from collections.abc import Sequence


def two_numbers(size: int | str | Sequence[int], what: str, form: str) -> tuple[int, int]:
    """``1024`` / ``"1024"`` / ``"2048x1536"`` (also ``×``) / ``(2048, 1536)`` -> the two numbers, in the
    order given; a single number is used for both.

    Args:
        size: the size as given.
        what: how error messages name it (``"size"``, ``"static size"``).
        form: the expected form for error messages, e.g. ``"N or WxH, e.g. 1024 or 2048x1536"``.

    Raises:
        ValueError: not one or two integers, or one is not positive.
    """
    if isinstance(size, str):
        try:
            nums = [int(p) for p in size.lower().replace("×", "x").split("x")]
        except ValueError as e:
            raise ValueError(f"{what} {size!r}: expected {form}") from e
    elif isinstance(size, int):
        nums = [size]
    else:
        nums = [int(s) for s in size]
    if len(nums) == 1:
        nums = nums * 2
    if len(nums) != 2 or min(nums) <= 0:
        raise ValueError(f"{what} {size!r}: expected {form} with positive numbers")
    return nums[0], nums[1]
