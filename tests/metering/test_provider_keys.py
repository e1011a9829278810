"""Tenants' provider keys in the ledger, encrypted with the master keys, on SQLite and PostgreSQL:
stored as Fernet tokens, listed masked, scoped by tenant, one default per stage, rotated with
MultiFernet, and a tampered token refused by name."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from clocks import FakeClock
from cryptography.fernet import Fernet
from sqlalchemy import select, text, update

from metering import (
    MASTER_KEYS_ENV,
    KeyCipher,
    Ledger,
    ProviderKeyError,
    load_catalog,
)
from metering._migrate import current_revision, downgrade, upgrade
from metering._schema import ProviderKey

OPENAI_KEY = "sk-test-0123456789abcdef"
DEEPGRAM_KEY = "dg_secret_key_9876"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 12, 29, 9, 0, tzinfo=UTC))


@pytest.fixture
def cipher() -> KeyCipher:
    return KeyCipher([Fernet.generate_key().decode()])


@pytest.fixture
async def ledger(database_url: str, clock: FakeClock) -> AsyncIterator[Ledger]:
    lg = await Ledger.open(database_url, catalog=load_catalog(), clock=clock)
    try:
        yield lg
    finally:
        await lg.aclose()


async def _ciphertexts(ledger: Ledger) -> dict[str, str]:
    async with ledger.engine.connect() as conn:
        return dict((await conn.execute(select(ProviderKey.id, ProviderKey.ciphertext))).all())


async def test_a_key_round_trips_encrypted_and_is_listed_masked(
    ledger: Ledger, cipher: KeyCipher, clock: FakeClock
) -> None:
    view = await ledger.create_provider_key("acme", "llm", "openai", OPENAI_KEY, cipher=cipher)
    assert view.masked_key == "****cdef" and view.provider_type == "llm" and not view.is_default
    assert view.created_at == clock()
    assert OPENAI_KEY not in repr(view)
    stored = await _ciphertexts(ledger)
    assert OPENAI_KEY not in stored[view.id] and "cdef" not in stored[view.id]
    assert await ledger.provider_keys("acme") == (view,)
    assert await ledger.tenant_credentials("acme", cipher=cipher) == {"openai": {"api_key": OPENAI_KEY}}


async def test_tenants_see_and_delete_only_their_own_keys(ledger: Ledger, cipher: KeyCipher) -> None:
    mine = await ledger.create_provider_key("acme", "stt", "deepgram", DEEPGRAM_KEY, cipher=cipher)
    assert await ledger.provider_keys("globex") == ()
    assert await ledger.tenant_credentials("globex", cipher=cipher) == {}
    assert not await ledger.delete_provider_key(mine.id, tenant="globex")
    assert not await ledger.delete_provider_key("no-such-id", tenant="acme")
    assert await ledger.provider_keys("acme") == (mine,)
    assert await ledger.delete_provider_key(mine.id, tenant="acme")
    assert await ledger.provider_keys("acme") == ()
    assert not await ledger.delete_provider_key(mine.id, tenant="acme")


async def test_one_default_per_tenant_and_stage_and_the_default_wins(
    ledger: Ledger, cipher: KeyCipher, clock: FakeClock
) -> None:
    first = await ledger.create_provider_key(
        "acme", "tts", "openai", "sk-first-key-1111", is_default=True, cipher=cipher
    )
    clock.advance(seconds=1)
    await ledger.create_provider_key(
        "acme", "llm", "openai", "sk-other-stage-2222", is_default=True, cipher=cipher
    )
    clock.advance(seconds=1)
    await ledger.create_provider_key(
        "globex", "tts", "openai", "sk-globex-3333", is_default=True, cipher=cipher
    )
    clock.advance(seconds=1)
    newer = await ledger.create_provider_key("acme", "llm", "openai", "sk-newer-plain-4444", cipher=cipher)
    # the newest key of a provider is not used over its default
    assert await ledger.tenant_credentials("acme", cipher=cipher) == {
        "openai": {"api_key": "sk-other-stage-2222"}
    }
    clock.advance(seconds=1)
    second = await ledger.create_provider_key(
        "acme", "llm", "openai", "sk-second-default-5555", is_default=True, cipher=cipher
    )
    defaults = {(v.provider_type, v.masked_key) for v in await ledger.provider_keys("acme") if v.is_default}
    assert defaults == {("tts", first.masked_key), ("llm", second.masked_key)}
    assert newer.masked_key == "****4444"
    # of two defaults of one provider (a stage each), the newest
    assert await ledger.tenant_credentials("acme", cipher=cipher) == {
        "openai": {"api_key": "sk-second-default-5555"}
    }
    assert [v.is_default for v in await ledger.provider_keys("globex")] == [True]


@pytest.mark.parametrize(
    ("provider_type", "provider_name", "api_key", "message"),
    [
        ("asr", "deepgram", DEEPGRAM_KEY, "provider_type 'asr'"),
        ("stt", "whisper", DEEPGRAM_KEY, "stt provider 'whisper' takes no API key"),
        ("tts", "polly", DEEPGRAM_KEY, "(providers with keys: openai, deepgram)"),
        ("llm", "nope", OPENAI_KEY, "llm provider 'nope'"),
        ("llm", "openai", "short", "5 characters long"),
    ],
)
async def test_a_bad_key_is_refused_naming_what_is_wrong(
    ledger: Ledger, cipher: KeyCipher, provider_type: str, provider_name: str, api_key: str, message: str
) -> None:
    with pytest.raises(ValueError) as caught:
        await ledger.create_provider_key("acme", provider_type, provider_name, api_key, cipher=cipher)
    assert message in str(caught.value) and api_key not in str(caught.value)
    assert await ledger.provider_keys("acme") == ()


async def test_rotation_old_key_decrypts_until_reencrypted_then_the_new_key_alone(
    ledger: Ledger, cipher: KeyCipher
) -> None:
    old = Fernet.generate_key().decode()
    new = Fernet.generate_key().decode()
    a = await ledger.create_provider_key("acme", "llm", "openai", OPENAI_KEY, cipher=KeyCipher([old]))
    await ledger.create_provider_key("globex", "stt", "deepgram", DEEPGRAM_KEY, cipher=KeyCipher([old]))
    before = await _ciphertexts(ledger)

    rotating = KeyCipher.parse(f"{new}, {old}")  # step 1: the new key first, the old one kept
    assert await ledger.tenant_credentials("acme", cipher=rotating) == {"openai": {"api_key": OPENAI_KEY}}
    with pytest.raises(ProviderKeyError):  # the new key alone cannot read what the old one wrote
        await ledger.tenant_credentials("acme", cipher=KeyCipher([new]))

    assert await ledger.reencrypt_provider_keys(rotating) == 2  # step 2
    after = await _ciphertexts(ledger)
    assert after.keys() == before.keys() and all(after[k] != before[k] for k in before)

    alone = KeyCipher([new])  # step 3: the old key dropped
    assert await ledger.tenant_credentials("acme", cipher=alone) == {"openai": {"api_key": OPENAI_KEY}}
    assert await ledger.tenant_credentials("globex", cipher=alone) == {"deepgram": {"api_key": DEEPGRAM_KEY}}
    with pytest.raises(ProviderKeyError, match=a.id):
        await ledger.tenant_credentials("acme", cipher=KeyCipher([old]))


async def test_a_tampered_ciphertext_is_an_error_naming_the_key_never_the_plaintext(
    ledger: Ledger, cipher: KeyCipher
) -> None:
    view = await ledger.create_provider_key("acme", "llm", "openai", OPENAI_KEY, cipher=cipher)
    token = (await _ciphertexts(ledger))[view.id]
    flipped = token[:-6] + ("A" if token[-6] != "A" else "B") + token[-5:]
    async with ledger.engine.begin() as conn:
        await conn.execute(update(ProviderKey).where(ProviderKey.id == view.id).values(ciphertext=flipped))
    with pytest.raises(ProviderKeyError) as caught:
        await ledger.tenant_credentials("acme", cipher=cipher)
    assert view.id in str(caught.value) and MASTER_KEYS_ENV in str(caught.value)
    assert OPENAI_KEY not in str(caught.value)
    with pytest.raises(ProviderKeyError, match=view.id):  # rotation changes nothing then
        await ledger.reencrypt_provider_keys(cipher)
    assert (await _ciphertexts(ledger))[view.id] == flipped
    assert [v.masked_key for v in await ledger.provider_keys("acme")] == ["****cdef"]  # still listed


@pytest.mark.parametrize("value", ["", " , ", "not-a-fernet-key"])
def test_no_or_a_malformed_master_key_is_a_clear_error(value: str) -> None:
    with pytest.raises(ValueError, match=MASTER_KEYS_ENV) as caught:
        KeyCipher.parse(value)
    assert "Fernet.generate_key()" in str(caught.value)
    if value.strip(" ,"):
        assert value not in str(caught.value)


async def test_the_0006_migration_goes_down_and_up(ledger: Ledger, cipher: KeyCipher) -> None:
    await ledger.create_provider_key("acme", "llm", "openai", OPENAI_KEY, cipher=cipher)
    async with ledger.engine.begin() as conn:
        await conn.run_sync(downgrade, "0005")
    async with ledger.engine.connect() as conn:
        assert await conn.run_sync(current_revision) == "0005"
        tables = await conn.run_sync(lambda c: set(c.dialect.get_table_names(c)))
    assert "provider_keys" not in tables
    async with ledger.engine.begin() as conn:
        await conn.run_sync(upgrade, "0006")
    async with ledger.engine.connect() as conn:
        assert await conn.run_sync(current_revision) == "0006"
        assert await conn.scalar(text("SELECT count(*) FROM provider_keys")) == 0
    assert await ledger.provider_keys("acme") == ()
