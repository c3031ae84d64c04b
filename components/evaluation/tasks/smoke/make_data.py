"""Regenerate the smoke suite's JSONL files (committed; run by hand): `python make_data.py`."""
import json
import random
import re
from pathlib import Path

HERE = Path(__file__).parent

FACTS = [
    ("The capital of France is", ["Paris", "Berlin", "Madrid", "Rome"], 0),
    ("The largest planet in the solar system is", ["Mars", "Jupiter", "Venus", "Mercury"], 1),
    ("Water is made of hydrogen and", ["carbon", "nitrogen", "oxygen", "helium"], 2),
    ("The opposite of hot is", ["cold", "loud", "tall", "fast"], 0),
    ("A week has seven", ["months", "years", "hours", "days"], 3),
    ("The sun rises in the", ["west", "east", "north", "south"], 1),
    ("Bees make", ["milk", "silk", "honey", "wool"], 2),
    ("The color of grass is", ["green", "purple", "orange", "black"], 0),
    ("Ice is frozen", ["sand", "air", "fire", "water"], 3),
    ("The capital of Japan is", ["Beijing", "Tokyo", "Seoul", "Bangkok"], 1),
    ("A baby cat is called a", ["puppy", "calf", "kitten", "foal"], 2),
    ("The primary language of Brazil is", ["Portuguese", "Spanish", "French", "Italian"], 0),
    ("Humans breathe in", ["helium", "neon", "argon", "oxygen"], 3),
    ("The Earth orbits the", ["Moon", "Sun", "Mars", "comet"], 1),
    ("Plants need sunlight to make", ["plastic", "metal", "food", "glass"], 2),
    ("The author of Hamlet is William", ["Shakespeare", "Wordsworth", "Blake", "Byron"], 0),
    ("A triangle has three", ["circles", "faces", "wheels", "sides"], 3),
    ("The freezing point of water in Celsius is", ["100 degrees", "zero degrees", "fifty degrees", "ten degrees"], 1),
    ("Doctors work in a", ["bakery", "garage", "hospital", "library"], 2),
    ("The largest ocean on Earth is the", ["Pacific", "Atlantic", "Indian", "Arctic"], 0),
    ("Cows drink", ["oil", "juice", "coffee", "water"], 3),
    ("The chemical symbol for gold is", ["Ag", "Au", "Fe", "Pb"], 1),
    ("A person who writes books is an", ["engineer", "actor", "author", "athlete"], 2),
    ("Snow is usually", ["white", "red", "blue", "brown"], 0),
    ("The month after January is", ["March", "April", "December", "February"], 3),
    ("Fish live in", ["trees", "water", "deserts", "caves"], 1),
    ("You can read books in a", ["stadium", "swimming pool", "library", "kitchen sink"], 2),
    ("The Great Wall is in", ["China", "Canada", "Chile", "Kenya"], 0),
    ("Five plus five equals", ["seven", "twelve", "nine", "ten"], 3),
    ("The tallest animal is the", ["mouse", "giraffe", "rabbit", "penguin"], 1),
]

ARITH_SEED = 7


def facts() -> list[dict]:
    return [{"question": q, "choices": c, "answer": a} for q, c, a in FACTS]


def arith(n: int = 30) -> list[dict]:
    rng = random.Random(ARITH_SEED)
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        rows.append({"question": f"Question: What is {a} plus {b}?\nAnswer:", "answer": str(a + b)})
    return rows


def prose(n: int = 24) -> list[dict]:
    """Prose paragraphs from the Python reference shipped with CPython (pydoc_data)."""
    import pydoc_data.topics as topics

    paras = []
    for name in sorted(topics.topics):
        for block in re.split(r"\n\s*\n", topics.topics[name]):
            text = " ".join(block.split())
            if block[:1].isalpha() and 300 <= len(text) <= 900 and "::=" not in text:
                paras.append(text)
    rng = random.Random(ARITH_SEED)
    return [{"text": t} for t in rng.sample(paras, n)]


if __name__ == "__main__":
    for name, rows in {"facts": facts(), "arith": arith(), "prose": prose()}.items():
        with open(HERE / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
