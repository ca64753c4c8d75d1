from services.common.server import main
from services.retrieval.app import create
from services.retrieval.config import RetrievalSettings

main("retrieval", RetrievalSettings, create)
