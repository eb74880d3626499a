"""JSON API for datasets."""

from __future__ import annotations

from fastapi import APIRouter, status

from backend import urls
from backend.datasets import service
from backend.datasets.schemas import DatasetCreate, DatasetCreated, DatasetOut
from backend.deps import AdminDep, SessionDep
from backend.jobs.schemas import job_out

router = APIRouter(prefix=urls.API, tags=["datasets"])


@router.get("/datasets", response_model=list[DatasetOut])
def list_datasets(session: SessionDep) -> list[DatasetOut]:
    """All datasets with their image and skipped counts."""
    return [service.dataset_out(d) for d in service.list_datasets(session)]


@router.get("/datasets/{slug}", response_model=DatasetOut)
def get_dataset(slug: str, session: SessionDep) -> DatasetOut:
    """One dataset."""
    return service.dataset_out(service.get_dataset(session, slug))


@router.post(
    "/datasets",
    response_model=DatasetCreated,
    status_code=status.HTTP_202_ACCEPTED,
    dependencies=[AdminDep],
)
def add_dataset(body: DatasetCreate, session: SessionDep) -> DatasetCreated:
    """Import an image folder (on the workers' file system) as a dataset."""
    ds, job = service.add_dataset(session, body.path, body.slug)
    return DatasetCreated(dataset=service.dataset_out(ds), job=job_out(job))
