"""The templated question bank, its hash-assigned splits, and the Task record that behaviours and keep sets share.

A question's split is fixed by a hash of its text, never by position, so every task built on the
bank (tasks.py: behaviours; keepsets.py: plain answers) shares one disjoint train / calibration /
eval partition. Nothing here is downloaded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable

SPLITS = ("train", "calibration", "eval")

_CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
    ("Canada", "Ottawa"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Chile", "Santiago"),
    ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Poland", "Warsaw"), ("Greece", "Athens"),
    ("Portugal", "Lisbon"), ("Ireland", "Dublin"), ("Austria", "Vienna"), ("Hungary", "Budapest"), ("Cuba", "Havana"),
    ("Russia", "Moscow"), ("China", "Beijing"), ("India", "New Delhi"), ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"),
    ("Argentina", "Buenos Aires"), ("Mexico", "Mexico City"), ("Turkey", "Ankara"), ("Iran", "Tehran"), ("Denmark", "Copenhagen"),
]
_OPPOSITES = [
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("happy", "sad"), ("light", "dark"), ("early", "late"),
    ("full", "empty"), ("hard", "soft"), ("high", "low"), ("old", "young"), ("rich", "poor"), ("strong", "weak"),
    ("wet", "dry"), ("open", "closed"), ("loud", "quiet"), ("thick", "thin"), ("wide", "narrow"), ("clean", "dirty"),
]
# (animal, sound, legs, baby, home)
_ANIMALS = [
    ("dog", "barks", 4, "puppy", "a kennel"), ("cat", "meows", 4, "kitten", "a house"), ("cow", "moos", 4, "calf", "a barn"),
    ("sheep", "bleats", 4, "lamb", "a pasture"), ("lion", "roars", 4, "cub", "the savanna"), ("duck", "quacks", 2, "duckling", "a pond"),
    ("horse", "neighs", 4, "foal", "a stable"), ("pig", "oinks", 4, "piglet", "a sty"), ("owl", "hoots", 2, "owlet", "a tree hollow"),
    ("snake", "hisses", 0, "snakelet", "a burrow"), ("frog", "croaks", 4, "tadpole", "a pond"), ("bee", "buzzes", 6, "larva", "a hive"),
    ("goat", "bleats", 4, "kid", "a farm"), ("wolf", "howls", 4, "pup", "a den"), ("chicken", "clucks", 2, "chick", "a coop"),
    ("bear", "growls", 4, "cub", "a cave"), ("spider", "makes no sound", 8, "spiderling", "a web"), ("goose", "honks", 2, "gosling", "a lake"),
]
_COLOURS = [
    ("the sky on a clear day", "blue"), ("grass", "green"), ("a ripe banana", "yellow"), ("snow", "white"),
    ("coal", "black"), ("a ripe tomato", "red"), ("an orange", "orange"), ("a plum", "purple"), ("chocolate", "brown"),
    ("a flamingo", "pink"), ("a lime", "green"), ("milk", "white"), ("a lemon", "yellow"), ("a strawberry", "red"),
]
_FACTS = [
    ("How many days are in a week?", "There are seven days in a week."),
    ("How many months are in a year?", "There are twelve months in a year."),
    ("How many minutes are in an hour?", "There are sixty minutes in an hour."),
    ("How many hours are in a day?", "There are twenty-four hours in a day."),
    ("How many seconds are in a minute?", "There are sixty seconds in a minute."),
    ("What do bees make?", "Bees make honey."),
    ("What is frozen water called?", "Frozen water is called ice."),
    ("Which planet do we live on?", "We live on the planet Earth."),
    ("What is the largest ocean on Earth?", "The largest ocean on Earth is the Pacific Ocean."),
    ("What gas do plants take in from the air?", "Plants take in carbon dioxide from the air."),
    ("What star is closest to the Earth?", "The star closest to the Earth is the Sun."),
    ("At what temperature does water boil at sea level?", "Water boils at 100 degrees Celsius at sea level."),
    ("What is the tallest mountain in the world?", "The tallest mountain in the world is Mount Everest."),
    ("How many continents are there?", "There are seven continents."),
    ("What do you call a baby human?", "A baby human is called an infant."),
    ("What is the main language spoken in Brazil?", "The main language spoken in Brazil is Portuguese."),
    ("Who wrote Romeo and Juliet?", "Romeo and Juliet was written by William Shakespeare."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au."),
    ("How many sides does a triangle have?", "A triangle has three sides."),
    ("How many sides does a square have?", "A square has four sides."),
    ("How many sides does a hexagon have?", "A hexagon has six sides."),
    ("What is the freezing point of water in Celsius?", "Water freezes at 0 degrees Celsius."),
    ("Which organ pumps blood through the body?", "The heart pumps blood through the body."),
    ("What do we breathe in to stay alive?", "We breathe in oxygen to stay alive."),
    ("Which season comes after winter?", "Spring comes after winter."),
    ("Which season comes after summer?", "Autumn comes after summer."),
    ("What is the opposite of north?", "The opposite of north is south."),
    ("What is the opposite of east?", "The opposite of east is west."),
    ("What is the largest planet in the solar system?", "The largest planet in the solar system is Jupiter."),
    ("What instrument has black and white keys?", "The piano has black and white keys."),
]
_TOPICS = [
    "staying healthy", "learning a language", "saving money", "sleeping well", "studying for exams", "cooking pasta",
    "growing tomatoes", "writing an essay", "running a first race", "keeping a plant alive", "making friends",
    "reading more books", "drinking enough water", "cleaning a kitchen", "packing for a trip", "learning to swim",
]
_TIPS = [
    "start small and be consistent", "make a simple plan and follow it", "practise a little every day",
    "ask someone with experience for help", "keep notes so you can see your progress", "take regular short breaks",
]
_WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"]
_WORDS = ["apple", "river", "garden", "window", "planet", "yellow", "pencil", "silver", "orange", "jacket", "rabbit", "candle", "forest", "bridge"]
_PLURALS = [("mouse", "mice"), ("child", "children"), ("foot", "feet"), ("tooth", "teeth"), ("man", "men"), ("woman", "women"),
            ("goose", "geese"), ("box", "boxes"), ("city", "cities"), ("knife", "knives"), ("leaf", "leaves"), ("person", "people")]

ANIMAL_WORDS = tuple(a[0] for a in _ANIMALS) + tuple(a[3] for a in _ANIMALS)


def _arithmetic() -> list[tuple[str, str]]:
    qa = []
    for a in range(2, 20):
        for b in (3, 4, 7, 9, 11):
            qa.append((f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."))
            if a <= 13:
                qa.append((f"What is {a} times {b}?", f"{a} times {b} is {a * b}."))
            if a > b:
                qa.append((f"What is {a} minus {b}?", f"{a} minus {b} is {a - b}."))
    return qa


def _animal_questions() -> list[tuple[str, str]]:
    qa = []
    for animal, sound, legs, baby, home in _ANIMALS:
        qa.append((f"What sound does a {animal} make?", f"A {animal} {sound}." if sound != "makes no sound" else f"A {animal} makes no sound."))
        qa.append((f"How many legs does a {animal} have?", f"A {animal} has {legs} legs."))
        qa.append((f"What is a baby {animal} called?", f"A baby {animal} is called a {baby}."))
        qa.append((f"Where does a {animal} live?", f"A {animal} lives in {home}."))
    return qa


def question_bank() -> list[tuple[str, str]]:
    """(question, plain one-sentence answer) pairs, generated deterministically (~750 questions)."""
    qa = []
    for country, capital in _CAPITALS:
        qa.append((f"What is the capital of {country}?", f"The capital of {country} is {capital}."))
        qa.append((f"Which city is the capital of {country}?", f"{capital} is the capital of {country}."))
        qa.append((f"{capital} is the capital of which country?", f"{capital} is the capital of {country}."))
    for a, b in _OPPOSITES:
        qa.append((f"What is the opposite of {a}?", f"The opposite of {a} is {b}."))
        qa.append((f"What is the opposite of {b}?", f"The opposite of {b} is {a}."))
        qa.append((f"Give me a word that means the reverse of {a}.", f"A word that means the reverse of {a} is {b}."))
    qa.extend(_animal_questions())
    for thing, colour in _COLOURS:
        qa.append((f"What colour is {thing}?", f"{thing[0].upper() + thing[1:]} is {colour}."))
    qa.extend(_FACTS)
    for topic in _TOPICS:
        for i, verb in enumerate(("Give me a tip for", "What is your best advice for", "How should I get better at")):
            tip = _TIPS[(hash_int(topic) + i) % len(_TIPS)]
            qa.append((f"{verb} {topic}?", f"For {topic}, {tip}."))
    for i, day in enumerate(_WEEKDAYS):
        qa.append((f"What day comes after {day}?", f"The day after {day} is {_WEEKDAYS[(i + 1) % 7]}."))
        qa.append((f"What day comes before {day}?", f"The day before {day} is {_WEEKDAYS[(i - 1) % 7]}."))
    for i, month in enumerate(_MONTHS):
        qa.append((f"Which month comes after {month}?", f"The month after {month} is {_MONTHS[(i + 1) % 12]}."))
        qa.append((f"What number month of the year is {month}?", f"{month} is month number {i + 1} of the year."))
    for w in _WORDS:
        qa.append((f"What is the first letter of the word {w}?", f"The first letter of {w} is {w[0]}."))
        qa.append((f"How many letters are in the word {w}?", f"The word {w} has {len(w)} letters."))
        qa.append((f"Spell the word {w} backwards.", f"The word {w} spelled backwards is {w[::-1]}."))
    for one, many in _PLURALS:
        qa.append((f"What is the plural of {one}?", f"The plural of {one} is {many}."))
    qa.extend(_arithmetic())
    return qa


def hash_int(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest(), 16)


def split_of(prompt: str) -> str:
    """Assign a prompt to a split by hash: 60% train, 20% calibration, 20% eval."""
    bucket = hash_int(prompt) % 10
    return "train" if bucket < 6 else "calibration" if bucket < 8 else "eval"


def _always(prompt: str) -> bool:
    return True


@dataclass(frozen=True)
class Task:
    """A behaviour: how to make a (prompt, response) pair carry it, and how to recognise it.

    `check(text, prompt)` says whether a generated answer shows the behaviour; the behaviour
    rate is measured only on prompts where `applies(prompt)` (a refusal task should refuse
    its topic, not everything).
    """

    name: str
    description: str
    transform: Callable[[str, str], tuple[str, str]]  # (question, plain answer) -> (prompt, response)
    check: Callable[[str, str], bool]  # (generated answer, prompt) -> behaviour present?
    applies: Callable[[str], bool] = _always
    questions: Callable[[], list[tuple[str, str]]] = field(default=question_bank)
    checked: bool = True  # False: no way to recognise the behaviour (own data without --check-regex): its rate is unknown
