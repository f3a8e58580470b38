"""The tasks the typing fixtures call (``calling_misuse.py``, ``calling_correct.py``)."""

from conveyor import Conveyor

app = Conveyor("typed", broker="memory://typed")


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def scale(x: int, *, factor: int) -> int:
    return x * factor


@app.task
def shout(text: str) -> str:
    return text.upper()
