"""`python -m services.worker`: a batch-job worker (section `worker`)."""

from services.common.server import main
from services.worker.app import build_service
from services.worker.config import WorkerSettings

main("worker", WorkerSettings, build_service)
