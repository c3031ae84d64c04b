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

# Templated facts (the demo suite's qf_recall): many short loglikelihood questions a 135M model mostly knows, so
# that a recovery interval can decide (30 hand-written facts cannot).
CAPITALS = [
    ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Germany", "Berlin"),
    ("England", "London"), ("Russia", "Moscow"), ("China", "Beijing"), ("Egypt", "Cairo"), ("Greece", "Athens"),
    ("Portugal", "Lisbon"), ("Ireland", "Dublin"), ("Austria", "Vienna"), ("Norway", "Oslo"), ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Poland", "Warsaw"), ("Hungary", "Budapest"),
    ("Turkey", "Ankara"), ("India", "New Delhi"), ("Thailand", "Bangkok"), ("South Korea", "Seoul"),
    ("Indonesia", "Jakarta"), ("Canada", "Ottawa"), ("Mexico", "Mexico City"), ("Argentina", "Buenos Aires"),
    ("Peru", "Lima"), ("Chile", "Santiago"), ("Kenya", "Nairobi"), ("Australia", "Canberra"), ("Cuba", "Havana"),
    ("Belgium", "Brussels"), ("the Netherlands", "Amsterdam"), ("Switzerland", "Bern"), ("Iran", "Tehran"),
    ("Iraq", "Baghdad"), ("Vietnam", "Hanoi"), ("the Philippines", "Manila"), ("Colombia", "Bogota"),
]
OPPOSITES = [
    ("hot", "cold"), ("up", "down"), ("big", "small"), ("fast", "slow"), ("day", "night"), ("black", "white"),
    ("happy", "sad"), ("open", "closed"), ("old", "young"), ("early", "late"), ("rich", "poor"), ("wet", "dry"),
    ("strong", "weak"), ("light", "dark"), ("full", "empty"), ("hard", "soft"), ("loud", "quiet"), ("high", "low"),
    ("left", "right"), ("win", "lose"), ("buy", "sell"), ("push", "pull"), ("good", "bad"), ("long", "short"),
    ("inside", "outside"), ("true", "false"), ("love", "hate"), ("clean", "dirty"), ("thick", "thin"), ("near", "far"),
]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]
FACTS_SEED = 11


def _choice(rng: random.Random, question: str, answer: str, pool: list[str], exclude: str = "", k: int = 2) -> dict:
    """k choices: the answer and k - 1 others from pool (not `exclude`), the answer at a random place."""
    others = rng.sample([p for p in dict.fromkeys(pool) if p not in (answer, exclude)], k - 1)
    at = rng.randrange(k)
    return {"question": question, "choices": others[:at] + [answer] + others[at:], "answer": at}


def templated() -> list[dict]:
    rng = random.Random(FACTS_SEED)
    capitals = [c for _, c in CAPITALS]
    rows = [_choice(rng, f"The capital of {country} is", city, capitals) for country, city in CAPITALS]
    words = [w for pair in OPPOSITES for w in pair]
    rows += [_choice(rng, f"The opposite of {a} is", b, words, a) for a, b in OPPOSITES]
    rows += [_choice(rng, f"The day after {d} is", DAYS[(i + 1) % 7], DAYS) for i, d in enumerate(DAYS)]
    rows += [_choice(rng, f"The month after {m} is", MONTHS[(i + 1) % 12], MONTHS) for i, m in enumerate(MONTHS)]
    letters = [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    rows += [_choice(rng, f"In the alphabet, the letter after {a} is", b, letters)
             for a, b in zip(letters, letters[1:], strict=False)]
    rows += [_choice(rng, f"Counting: {', '.join(WORDS[i:i + 3])},", WORDS[i + 3], WORDS) for i in range(len(WORDS) - 3)]
    for n in rng.sample(range(2, 400), 300):
        nums = [str(k) for k in range(max(1, n - 10), n + 12) if k != n + 1]
        rows.append(_choice(rng, f"Counting: {n - 1}, {n},", str(n + 1), nums))
    return rows


ARITH_SEED = 7


def facts() -> list[dict]:
    return [{"question": q, "choices": c, "answer": a} for q, c, a in FACTS]


def recall() -> list[dict]:
    """The demo suite's facts: the hand-written ones and the templated ones, two choices each (one loglikelihood
    request per choice: two choices keep the suite's cost within minutes of the smoke suite's on CPU)."""
    rng = random.Random(FACTS_SEED)
    hand = [_choice(rng, q, c[a], c) for q, c, a in FACTS]
    return hand + templated()


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
    for name, rows in {"facts": facts(), "recall": recall(), "arith": arith(), "prose": prose()}.items():
        with open(HERE / f"{name}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
