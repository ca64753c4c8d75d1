"""`python -m services.retrieval`: the retrieval service (section `retrieval`)."""

from services.common.server import main
from services.retrieval.app import build_service
from services.retrieval.config import RetrievalSettings

main("retrieval", RetrievalSettings, build_service)
