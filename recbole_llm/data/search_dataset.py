"""Mixed search and recommendation histories (the data UniSAR reads).

Atomic ``.inter`` schema (one row per behaviour event)::

    user_id:token  item_id:token  timestamp:float  behavior:token  query:token_seq  session_items:token_seq

``behavior`` is ``rec`` (a recommended item the user consumed; ``query`` and ``session_items``
empty) or ``search`` (one search session: ``query`` holds its word tokens, ``session_items`` the
items clicked in the session, ``item_id`` the first of them). An optional ``.item`` file may add
``item_words:token_seq``: item text tokens that share one vocabulary with the query words.

:class:`SearchRecDataset` turns the events into targets of both kinds. Each target row holds the
user's last ``history_length`` recommendation items and last ``history_length`` search sessions
before it, merged in time order. Split: per user and per behaviour kind, leave-one-out as RecBole
splits sequential data (last target tests, second-to-last validates). Histories never hold
events of a later split (train targets see train events only, valid targets no test events), so
nothing of the valid/test targets leaks into training.

Valid and test rows carry a fixed candidate list (``uni99``: the target plus ``eval_negatives``
items the user never interacted with, drawn uniformly with a seed from the raw user token), so
every model ranks the same candidates; :func:`sampled_candidates` reproduces them from raw tokens
for models trained on other datasets (SASRec on the recommendation events alone, for instance).
"""
from __future__ import annotations

import hashlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from recbole.data.dataset import Dataset
from recbole.data.interaction import Interaction

from recbole_llm.convert.search import BEHAVIOR_FIELD, CLICKS_FIELD, ITEM_WORDS_FIELD, QUERY_FIELD

REC, SEARCH = 1, 2
KIND_NAMES = {REC: "rec", SEARCH: "search"}

TARGET_KIND = "target_kind"
TARGET_SESSION = "target_session"
HISTORY_ITEM = "history_item"
HISTORY_SESSION = "history_session"
HISTORY_KIND = "history_kind"
CANDIDATES = "candidates"
POSITIVE_INDEX = "positive_index"

TRAIN, VALID, TEST = 0, 1, 2


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def sampled_candidates(
    user_token: str,
    kind: int,
    target_token: str,
    item_tokens: Sequence[str],
    user_item_tokens: set,
    n_negatives: int,
    seed: int,
) -> Tuple[List[str], int]:
    """Fixed ``uni<n>`` candidates for one target: (candidate tokens, index of the target).

    The negatives are drawn uniformly, without repetition, from ``item_tokens`` minus the items
    the user interacted with; the target sits at a seeded random position so that score ties
    are not resolved in its favour. Depends only on raw tokens and ``seed``.
    """
    rng = np.random.default_rng([seed, _stable_int(user_token), kind])
    pool = sorted(item_tokens)
    available = len(pool) - len(user_item_tokens | {target_token})
    if available < n_negatives:
        raise ValueError(
            f"user {user_token!r} leaves only {available} items to sample {n_negatives} negatives from; "
            "lower eval_negatives"
        )
    negatives: List[str] = []
    chosen = set()
    while len(negatives) < n_negatives:
        for index in rng.integers(0, len(pool), size=2 * n_negatives):
            token = pool[index]
            if token == target_token or token in user_item_tokens or token in chosen:
                continue
            chosen.add(token)
            negatives.append(token)
            if len(negatives) == n_negatives:
                break
    position = int(rng.integers(0, n_negatives + 1))
    return negatives[:position] + [target_token] + negatives[position:], position


def _split_labels(count: int) -> np.ndarray:
    """RecBole's leave-one-out rule for ``count`` targets: the last two go to test and valid."""
    labels = np.full(count, TRAIN, dtype=np.int64)
    held_out = min(2, count - 1)
    if held_out >= 1:
        labels[-1] = TEST
    if held_out == 2:
        labels[-2] = VALID
    return labels


def _padded(rows: Sequence[Sequence[int]], width: int) -> np.ndarray:
    out = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        row = list(row)[:width]
        out[i, : len(row)] = row
    return out


class SearchRecDataset(Dataset):
    """RecBole ``Dataset`` of mixed search/recommendation events, built into UniSAR targets.

    Attributes shared by the split copies: ``session_query`` (LongTensor [n_sessions + 1,
    max_query_words], word ids, row 0 = no session), ``session_clicks`` (LongTensor
    [n_sessions + 1, max_session_clicks], item ids), ``item_words`` (LongTensor [n_items,
    max_item_words] or None), ``word_num`` (size of the shared word vocabulary).
    Config keys: ``history_length``, ``max_query_words``, ``max_session_clicks``,
    ``max_item_words``, ``eval_negatives``, ``candidate_seed``, ``train_needs_both_kinds`` (keep
    only the training targets whose history holds both behaviour kinds, as UniSAR's release data
    does; valid and test rows are kept whatever their history).
    """

    def _init_alias(self):
        words = [field for field in (QUERY_FIELD, ITEM_WORDS_FIELD) if field in self.field2type]
        self._set_alias("word", words)
        super()._init_alias()

    def _set_alias(self, alias_name, default_value):
        if alias_name == "item_id" and CLICKS_FIELD in self.field2type:
            default_value = [*default_value, CLICKS_FIELD]
        super()._set_alias(alias_name, default_value)

    def _check_fields(self) -> None:
        required = [self.uid_field, self.iid_field, self.time_field, BEHAVIOR_FIELD, QUERY_FIELD, CLICKS_FIELD]
        missing = [field for field in required if field is None or field not in self.inter_feat]
        if missing:
            raise ValueError(
                f"dataset {self.dataset_name!r} lacks the interaction field(s) {missing}; "
                "UniSAR needs user_id, item_id, timestamp, behavior (rec|search), query and "
                "session_items (see recbole_llm/data/search_dataset.py) and load_col listing them"
            )
        tokens = set(self.field2id_token[BEHAVIOR_FIELD][1:])
        unknown = tokens - {"rec", "search"}
        if unknown:
            raise ValueError(f"field {BEHAVIOR_FIELD!r} holds {sorted(unknown)}; expected only 'rec' and 'search'")

    def _event_kinds(self) -> np.ndarray:
        id_token = self.field2id_token[BEHAVIOR_FIELD]
        is_search = id_token[self.inter_feat[BEHAVIOR_FIELD].to_numpy()] == "search"
        return np.where(is_search, SEARCH, REC)

    def _session_tables(self, kinds: np.ndarray) -> np.ndarray:
        """Fill ``session_query`` / ``session_clicks``; return each event's session id (0: rec)."""
        search_rows = np.flatnonzero(kinds == SEARCH)
        session_of_event = np.zeros(len(kinds), dtype=np.int64)
        session_of_event[search_rows] = np.arange(1, len(search_rows) + 1)
        queries = self.inter_feat[QUERY_FIELD].to_numpy()
        clicks = self.inter_feat[CLICKS_FIELD].to_numpy()
        items = self.inter_feat[self.iid_field].to_numpy()
        query_rows = [[]] + [queries[row] for row in search_rows]
        click_rows = [[]] + [clicks[row] if len(clicks[row]) else [items[row]] for row in search_rows]
        self.session_query = torch.from_numpy(_padded(query_rows, self.config["max_query_words"]))
        self.session_clicks = torch.from_numpy(_padded(click_rows, self.config["max_session_clicks"]))
        return session_of_event

    def build(self):
        """Three copies (train, valid, test) whose interactions are UniSAR target rows."""
        self._check_fields()
        kinds = self._event_kinds()
        session_of_event = self._session_tables(kinds)
        rows = self._target_rows(kinds, session_of_event)
        self._change_feat_format()
        self.word_num = self.num(QUERY_FIELD)
        self.item_words = None
        if ITEM_WORDS_FIELD in self.field2type and self.item_feat is not None:
            self.item_words = self.item_feat[ITEM_WORDS_FIELD][:, : self.config["max_item_words"]].long()
        return [self.copy(Interaction({k: torch.as_tensor(v) for k, v in part.items()})) for part in rows]

    def _target_rows(self, kinds: np.ndarray, session_of_event: np.ndarray) -> List[Dict[str, np.ndarray]]:
        users = self.inter_feat[self.uid_field].to_numpy()
        items = self.inter_feat[self.iid_field].to_numpy()
        times = self.inter_feat[self.time_field].to_numpy()
        clicks = self.session_clicks.numpy()
        order = np.lexsort((np.arange(len(users)), times, users))
        boundaries = np.flatnonzero(np.diff(users[order])) + 1
        builder = _TargetBuilder(self, clicks)
        for events in np.split(order, boundaries):
            if len(events):
                builder.add_user(users[events[0]], kinds[events], items[events], session_of_event[events], times[events])
        return builder.tables()


class _TargetBuilder:
    """Accumulates target rows per split for :meth:`SearchRecDataset.build`."""

    def __init__(self, dataset: SearchRecDataset, session_clicks: np.ndarray) -> None:
        self.history_length = dataset.config["history_length"]
        self.n_negatives = dataset.config["eval_negatives"]
        self.seed = dataset.config["candidate_seed"]
        self.train_needs_both_kinds = bool(dataset.config["train_needs_both_kinds"])
        self.uid_field, self.iid_field = dataset.uid_field, dataset.iid_field
        self.user_tokens = dataset.field2id_token[dataset.uid_field]
        self.item_tokens = dataset.field2id_token[dataset.iid_field]
        self.real_item_tokens = list(self.item_tokens[1:])
        self.item_token2id = dataset.field2token_id[dataset.iid_field]
        self.session_clicks = session_clicks
        self.rows: List[Dict[str, list]] = [self._empty() for _ in (TRAIN, VALID, TEST)]

    def _empty(self) -> Dict[str, list]:
        keys = [self.uid_field, self.iid_field, TARGET_KIND, TARGET_SESSION, HISTORY_ITEM, HISTORY_SESSION, HISTORY_KIND]
        return {key: [] for key in keys + [CANDIDATES, POSITIVE_INDEX]}

    def add_user(self, user: int, kinds: np.ndarray, items: np.ndarray, sessions: np.ndarray, times: np.ndarray) -> None:
        """Targets of one user whose events are given in time order."""
        labels = np.zeros(len(kinds), dtype=np.int64)
        for kind in (REC, SEARCH):
            positions = np.flatnonzero(kinds == kind)
            labels[positions] = _split_labels(len(positions))
        visible = {split: np.flatnonzero(labels <= split) for split in (TRAIN, VALID, TEST)}
        user_items = None
        for t in range(len(kinds)):
            history = self._history(int(np.searchsorted(times, times[t])), kinds, visible[labels[t]])
            hist_item = np.where(kinds[history] == REC, items[history], 0)
            hist_session = np.where(kinds[history] == SEARCH, sessions[history], 0)
            row = [user, kinds[t], sessions[t], hist_item, hist_session, kinds[history]]
            if labels[t] == TRAIN:
                if self.train_needs_both_kinds and not (REC in kinds[history] and SEARCH in kinds[history]):
                    continue
                targets = [items[t]] if kinds[t] == REC else [c for c in self.session_clicks[sessions[t]] if c]
                for target in targets:
                    self._append(TRAIN, row, target, None)
                continue
            if user_items is None:
                clicked = self.session_clicks[sessions[sessions > 0]].ravel()
                user_items = {self.item_tokens[i] for i in np.concatenate([items, clicked]) if i}
            self._append(labels[t], row, items[t], self._candidates(user, kinds[t], items[t], user_items))

    def _history(self, start: int, kinds: np.ndarray, visible: np.ndarray) -> np.ndarray:
        """Positions of the last N rec and last N search events before ``start``, in time order.

        ``start`` is the first event at the target's timestamp: events that share it are not history.
        """
        earlier = visible[visible < start]
        rec = earlier[kinds[earlier] == REC][-self.history_length :]
        search = earlier[kinds[earlier] == SEARCH][-self.history_length :]
        return np.sort(np.concatenate([rec, search]))

    def _candidates(self, user: int, kind: int, item: int, user_items: set) -> Tuple[np.ndarray, int]:
        tokens, position = sampled_candidates(
            self.user_tokens[user], int(kind), self.item_tokens[item], self.real_item_tokens,
            user_items, self.n_negatives, self.seed,
        )
        return np.array([self.item_token2id[token] for token in tokens]), position

    def _append(self, split: int, row: list, target: int, candidates: Optional[Tuple[np.ndarray, int]]) -> None:
        table = self.rows[split]
        user, kind, session, hist_item, hist_session, hist_kind = row
        width = 2 * self.history_length
        for key, values in ((HISTORY_ITEM, hist_item), (HISTORY_SESSION, hist_session), (HISTORY_KIND, hist_kind)):
            padded = np.zeros(width, dtype=np.int64)  # right-aligned: the most recent event is last
            if len(values):
                padded[-len(values):] = values
            table[key].append(padded)
        table[self.uid_field].append(user)
        table[self.iid_field].append(target)
        table[TARGET_KIND].append(kind)
        table[TARGET_SESSION].append(session)
        if candidates is not None:
            table[CANDIDATES].append(candidates[0])
            table[POSITIVE_INDEX].append(candidates[1])

    def tables(self) -> List[Dict[str, np.ndarray]]:
        out = []
        for split, table in enumerate(self.rows):
            width = 2 * self.history_length
            arrays = {
                key: np.asarray(values, dtype=np.int64).reshape(-1, width) if key.startswith("history_")
                else np.asarray(values, dtype=np.int64)
                for key, values in table.items()
                if split != TRAIN or key not in (CANDIDATES, POSITIVE_INDEX)
            }
            if split != TRAIN:
                arrays[CANDIDATES] = arrays[CANDIDATES].reshape(-1, self.n_negatives + 1)
            out.append(arrays)
        return out
