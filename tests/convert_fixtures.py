"""Tiny data sets in the exact upstream formats the converters read, written on demand.

Every writer takes a folder, writes the files there and returns the ``--input`` paths. The
interactions come from :func:`sequences`: 12 users with 6-9 interactions over 10 items, so
that a 5-core keeps (almost) everything and SASRec can train on the result.
"""
from __future__ import annotations

import gzip
import json
import random
from pathlib import Path
from typing import Dict, List, Tuple

N_USERS = 12
N_ITEMS = 10
BASE_TIME = 1_600_000_000  # seconds


def sequences(seed: int = 0) -> Dict[int, List[Tuple[int, int]]]:
    """``user -> [(item, unix seconds), ...]`` in chronological order (items 1..N_ITEMS)."""
    rng = random.Random(seed)
    data = {}
    for user in range(1, N_USERS + 1):
        items = rng.sample(range(1, N_ITEMS + 1), rng.randint(6, 9))
        times = sorted(rng.sample(range(10_000), len(items)))
        data[user] = [(item, BASE_TIME + 3600 * t) for item, t in zip(items, times)]
    return data


def _write_lines(path: Path, lines: List[str]) -> Path:
    text = "".join(line + "\n" for line in lines)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# Amazon Reviews 2023 ---------------------------------------------------------------------------

def amazon2023_review(user: int, item: int, seconds: int, rating: float = 5.0) -> dict:
    return {
        "rating": rating, "title": "Great", "text": "Works <br />well", "images": [],
        "asin": f"B0VAR{item:05d}", "parent_asin": f"B0PAR{item:05d}", "user_id": f"AUSER{user:04d}",
        "timestamp": seconds * 1000 + 123, "helpful_vote": 0, "verified_purchase": True,
    }


def amazon2023_meta(item: int) -> dict:
    return {
        "main_category": "Industrial & Scientific",
        "title": f"Lab beaker &amp; stand <b>no. {item}</b>",
        "average_rating": 4.5, "rating_number": 10,
        "features": ["Borosilicate glass", "Heat\tresistant"],
        "description": [f"A fine beaker\nnumber {item}."],
        "price": None if item % 2 else 12.5, "images": [], "videos": [],
        "store": "LabCo" if item % 3 else None,
        "categories": [] if item == 1 else ["Industrial & Scientific", "Lab Supplies"],
        "details": {"Brand": "LabBrand"}, "parent_asin": f"B0PAR{item:05d}", "bought_together": None,
    }


def write_amazon2023(folder: Path, malformed: bool = False, drop_meta_of: int = 0) -> List[Path]:
    """``Toy.jsonl.gz`` + ``meta_Toy.jsonl.gz``; optionally a malformed line and an item without meta.

    Besides the :func:`sequences`, the reviews hold a duplicate and a user outside the 5-core.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.md").write_text("Amazon Reviews 2023, Toy category\n")  # not data: ignored
    lines = [json.dumps(amazon2023_review(u, i, t)) for u, seq in sequences().items() for i, t in seq]
    lines.append(lines[0])  # an exact duplicate review
    # a user with two reviews, one of an item nobody else reviewed: the 5-core removes both
    lines += [json.dumps(amazon2023_review(N_USERS + 1, item, BASE_TIME + k)) for k, item in enumerate((1, N_ITEMS + 1))]
    if malformed:
        lines[3:3] = ['{"rating": 5.0, "user_id": "broken', "not json at all"]
    meta = [json.dumps(amazon2023_meta(i)) for i in range(1, N_ITEMS + 2) if i != drop_meta_of]
    meta.append(json.dumps(amazon2023_meta(999)))  # an item nobody reviewed
    return [
        _write_lines(folder / "Toy.jsonl.gz", lines),
        _write_lines(folder / "meta_Toy.jsonl.gz", meta),
    ]


def write_amazon2023_benchmark(folder: Path) -> List[Path]:
    """The published ``5core/last_out_w_his`` csv splits plus the meta file."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = {"train": [], "valid": [], "test": []}
    for user, seq in sequences().items():
        asins = [f"B0PAR{i:05d}" for i, _ in seq]
        for k, (_, t) in enumerate(seq):
            part = "test" if k == len(seq) - 1 else "valid" if k == len(seq) - 2 else "train"
            parts[part].append(f"AUSER{user:04d},{asins[k]},5.0,{t * 1000},{' '.join(asins[:k])}")
    paths = []
    for part, rows in parts.items():
        paths.append(_write_lines(folder / f"Toy.{part}.csv", ["user_id,parent_asin,rating,timestamp,history"] + rows))
    meta = [json.dumps(amazon2023_meta(i)) for i in range(1, N_ITEMS + 1)]
    paths.append(_write_lines(folder / "meta_Toy.jsonl", meta))
    return paths


# Amazon Reviews 2018 / 2014 ------------------------------------------------------------------

def write_amazon2018(folder: Path, python_literal_meta: bool = True) -> List[Path]:
    """``Toy.json.gz`` reviews and ``meta_Toy.json.gz`` (2014-style Python literals, or JSON)."""
    folder.mkdir(parents=True, exist_ok=True)
    reviews = []
    for user, seq in sequences(1).items():
        for item, t in seq:
            reviews.append(json.dumps({
                "overall": 4.0, "verified": True, "reviewTime": "01 2, 2016", "reviewerID": f"A{user:05d}",
                "asin": f"000{item:07d}", "reviewerName": "Ann", "reviewText": "ok", "summary": "ok",
                "unixReviewTime": t, "vote": "1,234", "style": {"Size:": " Large"},
            }))
    meta = []
    for item in range(1, N_ITEMS + 1):
        record = {
            "asin": f"000{item:07d}", "title": f"Ruler {item} cm", "brand": "Westcott",
            "description": ["A <i>steel</i> ruler.", "Metric."], "price": "$12.99",
            "category": ["Office Products", "Office & School Supplies", "Rulers"],
            "also_buy": [], "rank": "1,234 in Office Products", "details": {}, "main_cat": "Office Products",
        }
        if python_literal_meta:
            del record["category"]
            record["categories"] = [["Office Products", "Rulers"], ["Office Products", "Measuring"]]
            record["description"] = "A <i>steel</i> ruler, 'metric'."
            meta.append(repr(record))  # single quotes: not JSON
        else:
            meta.append(json.dumps(record))
    return [_write_lines(folder / "Toy.json.gz", reviews), _write_lines(folder / "meta_Toy.json.gz", meta)]


# MovieLens -----------------------------------------------------------------------------------

MOVIES = [
    ("Toy Story (1995)", ["Animation", "Children's", "Comedy"]),
    ("Usual Suspects, The (1995)", ["Crime", "Thriller"]),
    ("City of Lost Children, The (Cité des enfants perdus, La) (1995)", ["Adventure", "Sci-Fi"]),
    ("Heat (1995)", ["Action", "Crime", "Thriller"]),
    ("Sabrina (1995)", ["Comedy", "Romance"]),
    ("Jumanji (1995)", ["Adventure", "Children's", "Fantasy"]),
    ("Balto (1995)", ["Animation", "Children's"]),
    ("Nixon (1995)", ["Drama"]),
    ("Casino (1995)", ["Drama", "Thriller"]),
    ("Babe", ["Children's", "Comedy", "Drama"]),  # no year (as some ml-25m titles)
]


def write_movielens(folder: Path, variant: str) -> List[Path]:
    """ml-100k (``u.data``, ``u.item``, ``u.user``), ml-1m (``*.dat``) or ml-20m (``*.csv``)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = sequences(2)
    ratings = [(u, i, 1 + (u + i) % 5, t) for u, seq in data.items() for i, t in seq]
    if variant == "ml-100k":
        genres = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
                  "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
                  "Romance", "Sci-Fi", "Thriller", "War", "Western"]
        (folder / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ratings), encoding="latin-1")
        items = []
        for k, (title, names) in enumerate(MOVIES, 1):
            flags = "|".join("1" if g in names else "0" for g in genres)
            items.append(f"{k}|{title}|01-Jan-1995||http://us.imdb.com/M/title-exact?x|{flags}\n")
        (folder / "u.item").write_text("".join(items), encoding="latin-1")
        (folder / "u.genre").write_text("".join(f"{g}|{k}\n" for k, g in enumerate(genres)) + "\n", encoding="latin-1")
        (folder / "u.user").write_text("".join(f"{u}|24|M|technician|85711\n" for u in data), encoding="latin-1")
        return [folder]
    if variant == "ml-1m":
        (folder / "ratings.dat").write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in ratings), encoding="latin-1")
        (folder / "movies.dat").write_text(
            "".join(f"{k}::{title}::{'|'.join(names)}\n" for k, (title, names) in enumerate(MOVIES, 1)), encoding="latin-1")
        (folder / "users.dat").write_text("".join(f"{u}::F::25::4::02139\n" for u in data), encoding="latin-1")
        return [folder / "ratings.dat", folder / "movies.dat", folder / "users.dat"]
    if variant == "ml-20m":
        (folder / "ratings.csv").write_text(
            "userId,movieId,rating,timestamp\n" + "".join(f"{u},{i},{r}.5,{t}\n" for u, i, r, t in ratings), encoding="utf-8")
        movies = [f'{k},"{title}",{"|".join(names)}\n' if "," in title else f"{k},{title},{'|'.join(names)}\n"
                  for k, (title, names) in enumerate(MOVIES, 1)]
        movies.append("11,Unrated Film (2010),(no genres listed)\n")
        (folder / "movies.csv").write_text("movieId,title,genres\n" + "".join(movies), encoding="utf-8")
        return [folder]
    raise ValueError(variant)


# UniSRec / VQ-Rec downstream -----------------------------------------------------------------

def write_unisrec(folder: Path, name: str = "Toy") -> List[Path]:
    """``<name>.train/.valid/.test.inter``, ``.text``, ``.item2index``, ``.user2index``."""
    folder.mkdir(parents=True, exist_ok=True)
    data = sequences(3)
    header = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    parts = {"train": [], "valid": [], "test": []}
    for user, seq in data.items():
        items = [str(i - 1) for i, _ in seq]  # 0-based indices
        u = str(user - 1)
        for k in range(len(items) - 3, 0, -1):  # every prefix, longest first (as upstream)
            parts["train"].append(f"{u}\t{' '.join(items[:k])}\t{items[k]}\n")
        parts["valid"].append(f"{u}\t{' '.join(items[:-2])}\t{items[-2]}\n")
        parts["test"].append(f"{u}\t{' '.join(items[:-1])}\t{items[-1]}\n")
    for part, rows in parts.items():
        (folder / f"{name}.{part}.inter").write_text(header + "".join(rows), encoding="utf-8")
    (folder / f"{name}.text").write_text(
        "item_id:token\ttext:token_seq\n"
        + "".join(f"ASIN{i:04d}\tGlass beaker {i}. Industrial & Scientific Lab. LabCo. \n" for i in range(N_ITEMS)),
        encoding="utf-8")
    (folder / f"{name}.item2index").write_text("".join(f"ASIN{i:04d}\t{i}\n" for i in range(N_ITEMS)), encoding="utf-8")
    (folder / f"{name}.user2index").write_text("".join(f"REVIEWER{u:03d}\t{u - 1}\n" for u in data), encoding="utf-8")
    return [folder]


# LC-Rec / LETTER json ------------------------------------------------------------------------

def write_lcrec(folder: Path, name: str = "Toy") -> List[Path]:
    """``<name>.inter.json`` (user -> chronological 0-based item ids) and ``<name>.item.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    inter = {str(u - 1): [i - 1 for i, _ in seq] for u, seq in sequences(4).items()}
    items = {
        str(i): {"title": f"Stapler &amp; staples {i}", "description": "" if i % 2 else "Heavy duty.",
                 "brand": "Swingline", "categories": "Office Products, Staplers"}
        for i in range(N_ITEMS)
    }
    (folder / f"{name}.inter.json").write_text(json.dumps(inter, indent=4), encoding="utf-8")
    (folder / f"{name}.item.json").write_text(json.dumps(items, indent=4), encoding="utf-8")
    return [folder]


# ReChorus ------------------------------------------------------------------------------------

def write_rechorus(folder: Path, name: str = "Toy") -> List[Path]:
    """``train.csv``, ``dev.csv``, ``test.csv`` (tab separated, 1-based), ``<name>.text``, ``.item2index``.

    The dev and test rows of each user share one timestamp (day granularity, as upstream).
    """
    folder.mkdir(parents=True, exist_ok=True)
    train, dev, test = [], [], []
    for user, seq in sequences(5).items():
        day = lambda t: t - t % 86400  # noqa: E731
        for item, t in seq[:-2]:
            train.append(f"{user}\t{item}\t{day(t)}\n")
        last = day(seq[-1][1])
        negatives = "[" + ", ".join(str(k) for k in range(1, 4)) + "]"
        dev.append(f"{user}\t{seq[-2][0]}\t{last}\t{negatives}\n")
        test.append(f"{user}\t{seq[-1][0]}\t{last}\t{negatives}\n")
    (folder / "train.csv").write_text("user_id\titem_id\ttime\n" + "".join(train), encoding="utf-8")
    for file, rows in (("dev.csv", dev), ("test.csv", test)):
        (folder / file).write_text("user_id\titem_id\ttime\tneg_items\n" + "".join(rows), encoding="utf-8")
    (folder / f"{name}.text").write_text(
        "id\ttext\n" + "".join(f"B0OFFICE{i:02d}\tPaper clips {i} Clips ACCO\n" for i in range(1, N_ITEMS + 1)),
        encoding="utf-8")
    (folder / f"{name}.item2index").write_text(
        "".join(f"B0OFFICE{i:02d}\t{i}\n" for i in range(1, N_ITEMS + 1)), encoding="utf-8")
    return [folder]


#: format, fixture writer: one case per upstream variant
CASES = {
    "amazon2023": ("amazon2023", write_amazon2023),
    "amazon2023-benchmark": ("amazon2023", write_amazon2023_benchmark),
    "amazon2018": ("amazon2018", write_amazon2018),
    "ml-100k": ("movielens", lambda f: write_movielens(f, "ml-100k")),
    "ml-1m": ("movielens", lambda f: write_movielens(f, "ml-1m")),
    "ml-20m": ("movielens", lambda f: write_movielens(f, "ml-20m")),
    "unisrec": ("unisrec", write_unisrec),
    "lcrec": ("lcrec", write_lcrec),
    "rechorus": ("rechorus", write_rechorus),
}


# KuaiSAR (search and recommendation logs) ------------------------------------------------------

def write_kuaisar(folder: Path) -> List[Path]:
    """``rec_inter.csv``, ``src_inter.csv`` and ``item_features.csv`` of one user with five events."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rec_inter.csv").write_text(
        "user_id,item_id,playing_time,duration_ms,time,timestamp,click,forward,like,follow,search,search_item_related\n"
        + "".join(f"7,{100 + k},1,1,t,{(k + 1) * 1000000}.0,1,0,0,0,0,0\n" for k in range(4)))
    (folder / "src_inter.csv").write_text(
        "user_id,search_session_id,search_session_time,search_session_timestamp,keyword,search_source,item_id,click_cnt,item_type\n"
        '7,s1,t,4500000,"[20, 34, 3]",USER_INPUT,200,1,VIDEO\n')
    (folder / "item_features.csv").write_text('item_id,caption\n100,"[20, 7]"\n200,"[]"\n')
    return [folder]
