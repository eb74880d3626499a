"""API shapes that every domain shares: a page of a paginated list."""

from __future__ import annotations

from typing import Generic, TypeVar

from pydantic import BaseModel, Field

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    offset: int
    limit: int
    next: str | None = Field(None, description="URL of the next page, if any")
