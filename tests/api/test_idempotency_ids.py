"""The batch id an Idempotency-Key maps to: pinned, because it must not change across a deploy."""

from __future__ import annotations

import re

from toolkit.api.idempotency import MAX_KEY_GENERATIONS, idempotent_batch_id

# Pinned: a client that retries its submission across a deploy must land on the batch it already
# created; a different id would create a second batch (and run every memory twice). Computed once
# outside Python, from the documented formula (the first 32 hex digits of sha256 of
# "idempotency:<user>:<key>", with ":<generation>" appended from generation 1 on):
#   printf '%s' 'idempotency:u1:k1' | openssl dgst -sha256 -r | cut -c1-32
# Never change these values: change the function only with a migration note.
PINNED = {
    ("u1", "k1", 0): "e942b36bf0273a8415dab2dff9d73dee",
    ("u1", "k1", 1): "ff02409dca070e2e459599f4ff45c2a4",
}


def test_idempotent_batch_ids_are_pinned_to_values_computed_outside_the_code() -> None:
    assert {args: idempotent_batch_id(*args) for args in PINNED} == PINNED
    assert idempotent_batch_id("u1", "k1") == PINNED[("u1", "k1", 0)]  # generation 0 is the default


def test_each_user_key_and_generation_has_its_own_id_shaped_like_a_uuid4_hex() -> None:
    ids = {
        idempotent_batch_id(user, key, generation)
        for user in ("u1", "u2")
        for key in ("k1", "k2", "u2:k1")
        for generation in range(MAX_KEY_GENERATIONS)
    }
    assert len(ids) == 2 * 3 * MAX_KEY_GENERATIONS
    assert all(re.fullmatch(r"[0-9a-f]{32}", batch_id) for batch_id in ids)
