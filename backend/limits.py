"""Bounds on what a request may carry: integers the database can store, body sizes.

A path or query integer is bound at the edge so no value the database cannot hold ever reaches
a query (SQLite raises OverflowError past 64 bits, PostgreSQL a DataError past its column's
width: both were 500s). Unit indexes and offsets are ``integer`` columns (32-bit on
PostgreSQL); row ids are ``bigint``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

INT_MAX = 2**31 - 1  # an `integer` column
BIGINT_MAX = 2**63 - 1  # a `bigint` id


def storable_index(n: int) -> bool:
    """True when ``n`` fits an ``integer`` column (a larger unit index names nothing)."""
    return 0 <= n <= INT_MAX


def storable_id(n: int) -> bool:
    """True when ``n`` fits a ``bigint`` id (a larger id names nothing)."""
    return 0 <= n <= BIGINT_MAX


Offset = Annotated[int, Query(ge=0, le=INT_MAX, description="index of the first item")]
FollowedJob = Annotated[
    int | None, Query(alias="job", ge=1, le=BIGINT_MAX, description="a job to follow live")
]
