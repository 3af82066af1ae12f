"""Users, API tokens and Runner credentials: who a secret belongs to, and managing them.

Secrets are random (256 bits), shown once, and kept only as their SHA-256 (a hash of a
high-entropy secret needs no slow KDF). Everything is also held in memory, indexed by hash,
so authenticating a call is one hash and one dict lookup; changes are written to the
database before they take effect in memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlmodel import Session, select

from hakuriver_common import limits
from hakuriver_common.config import Config
from hakuriver_common.credentials import write_secret
from hakuriver_common.roles import (
    API_TOKEN_PREFIX,
    JOIN_TOKEN_PREFIX,
    RUNNER_CREDENTIAL_PREFIX,
    Role,
    new_secret,
    user_name_problem,
)
from hakuriver_host.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    at_most,
)
from hakuriver_host.group_commit import GroupCommit
from hakuriver_host.identity import ANONYMOUS, JOINING, Kind, Principal
from hakuriver_host.models import ApiTokenRecord, RunnerCredentialRecord, UserRecord, utcnow
from hakuriver_host.store import Store

log = logging.getLogger(__name__)
NO_CREDENTIAL = (
    "no credential: send 'authorization: Bearer <token>' (the CLI reads $HAKURIVER_TOKEN, "
    "auth.token or auth.credentials_file)"
)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class IssuedToken:
    record: ApiTokenRecord
    secret: str


def _written_admin_token(path: Path, whose: str) -> str:
    """A new API token's secret, written to ``path`` (0600) before it is stored: one stored
    that nobody holds is no way in. OSError naming the file and its key if it cannot be."""
    secret = new_secret(API_TOKEN_PREFIX)
    try:
        write_secret(path, secret)
    except OSError as exc:
        raise OSError(
            f"cannot write {whose} API token to {path} (auth.credentials_file): "
            f"{exc.strerror or exc}"
        ) from None
    return secret


class Access:
    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        # A cluster of Runners joining at once shares transactions (group commit).
        self._credential_writes = GroupCommit(self._merge_all, store.executor)
        self.users: dict[str, UserRecord] = {}
        self._tokens: dict[str, ApiTokenRecord] = {}  # by secret hash
        # The same records by token id: ``again`` looks one up at every chunk of an SSH
        # session and every message of a stream.
        self._token_ids: dict[str, ApiTokenRecord] = {}
        self._runners: dict[str, RunnerCredentialRecord] = {}  # by hostname
        self._runner_hashes: dict[str, str] = {}  # secret hash -> hostname
        # Hostnames whose credential is being written: taken already for other joiners.
        self._issuing: set[str] = set()
        # Users are added and removed, and tokens made, one at a time: each checks the
        # others (a name taken, the last admin, the token's user) across a write to the
        # store.
        self._user_changes = asyncio.Lock()
        # Revocations take turns: one asked while another is being written waits for it,
        # not answering "revoked" from a mark undone if that write is refused (``_revoke``).
        self._revocations = asyncio.Lock()
        # Told when a token is revoked or a user deleted (``on_revoked``).
        self._revoked_listeners: set[Callable[[], None]] = set()
        auth = config.auth
        # auth.authentication = false: nobody is asked, everybody is ``anyone``, an admin.
        self.open = not auth.authentication
        self.anyone = Principal(Kind.USER, auth.bootstrap_admin, Role.ADMIN)

    # ----- start ------------------------------------------------------------------------

    async def load(self, bootstrap: bool = True) -> None:
        """Read every identity; with ``bootstrap``, create the first admin if none exists."""
        users, tokens, runners = await self.store.run(self._load)
        self.users = {u.name: u for u in users}
        self._tokens = {t.secret_hash: t for t in tokens}
        self._token_ids = {t.token_id: t for t in tokens}
        self._runners = {r.hostname: r for r in runners}
        self._runner_hashes = {r.secret_hash: r.hostname for r in runners}
        if bootstrap and not self.users and not self.open:
            await self._bootstrap()

    def _load(
        self,
    ) -> tuple[list[UserRecord], list[ApiTokenRecord], list[RunnerCredentialRecord]]:
        with Session(self.store.engine, expire_on_commit=False) as session:
            return (
                list(session.exec(select(UserRecord))),
                list(session.exec(select(ApiTokenRecord))),
                list(session.exec(select(RunnerCredentialRecord))),
            )

    async def _bootstrap(self) -> None:
        """The first start: an admin and their token, written to the credentials file (or
        beside it, when that file exists already). The file is written first: an admin
        stored with a token nobody holds would stop the next start from making one."""
        name = self.config.auth.bootstrap_admin
        path = self.config.auth.credentials_file.expanduser()
        if path.exists():
            path = path.with_name(path.name + ".new")
        secret = _written_admin_token(path, "the first admin's")
        try:
            # Reclaimed: tasks submitted while authentication was off are this admin's.
            await self.create_user(name, Role.ADMIN, reclaim=True)
            await self.create_token(name, "created on the Host's first start", None, secret)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        log.warning("first start: created admin %r; their API token is in %s (0600)", name, path)

    async def recover_admin(self) -> tuple[Path, Path | None]:
        """A new token for the bootstrap admin (created if missing), written to the
        credentials file: the way back in when every admin token is lost. A file there
        already (someone's token, maybe still good) is kept beside it, renamed; returns
        the file written and the one kept."""
        name = self.config.auth.bootstrap_admin
        if name in self.users and self.users[name].role != Role.ADMIN:
            raise FailedPrecondition(f"user {name!r} exists and is not an admin")
        path = self.config.auth.credentials_file.expanduser()
        kept = None
        if path.exists():
            kept = path.with_name(f"{path.name}.{utcnow():%Y%m%dT%H%M%S}.old")
            path.replace(kept)
        try:
            secret = _written_admin_token(path, "a new admin")
        except OSError:
            if kept is not None:
                kept.replace(path)
            raise
        if name not in self.users:  # deleted: it takes its own name back
            await self.create_user(name, Role.ADMIN, reclaim=True)
        await self.create_token(name, "recovered with hakuriver.host", None, secret)
        return path, kept

    # ----- authentication ---------------------------------------------------------------

    def authenticate(self, secret: str) -> Principal:
        """The principal a bearer secret stands for; Unauthenticated saying why not."""
        if not secret:
            raise Unauthenticated(NO_CREDENTIAL)
        join = self.config.auth.join_token
        if join and hmac.compare_digest(secret.encode(), join.encode()):
            return JOINING
        hashed = digest(secret)
        if secret.startswith(RUNNER_CREDENTIAL_PREFIX):
            return self._runner(hashed)
        if secret.startswith(JOIN_TOKEN_PREFIX) and not join:
            raise Unauthenticated(
                "this Host takes no new Runners: its auth.join_token is empty (an admin sets "
                "one and restarts it to let Runners join)"
            )
        if secret.startswith(JOIN_TOKEN_PREFIX):
            raise Unauthenticated("wrong join token: it is not this Host's auth.join_token")
        return self._holder(self._tokens.get(hashed))

    def claimed_by(self, secret: str) -> Principal:
        """Whom a refused API token was issued to (revoked, expired, its user deleted), with
        no role, or the Runner a revoked credential was issued to: so the audit log names
        who tried, not "anonymous"; ANONYMOUS for a secret that is neither of this Host's."""
        if not secret:
            return ANONYMOUS
        hashed = digest(secret)
        if hostname := self._runner_hashes.get(hashed):
            return Principal(Kind.RUNNER, hostname)
        token = self._tokens.get(hashed)
        if token is None:
            return ANONYMOUS
        return Principal(Kind.USER, token.user, None, token.token_id)

    def again(self, who: Principal) -> Principal:
        """``who`` as it stands now: Unauthenticated if its token was revoked or expired, or
        its user deleted, since it was checked (a grant held a while, as an SSH ticket, is
        only as good as the token it came from); its role as it is now."""
        if who.kind is not Kind.USER or not who.token_id:
            return who
        try:
            token: ApiTokenRecord | None = self.token(who.token_id)
        except NotFound:
            token = None
        return self._holder(token)

    def seconds_left(self, who: Principal) -> float | None:
        """Seconds until the token ``who`` called with expires (0 once it has); None when it
        does not expire (or ``who`` holds no API token)."""
        token = self._token_ids.get(who.token_id) if who.token_id else None
        if token is None or token.expires_at is None:
            return None
        return max(0.0, (token.expires_at - utcnow()).total_seconds())

    def _holder(self, token: ApiTokenRecord | None) -> Principal:
        """The user an API token stands for now; Unauthenticated saying why not."""
        if token is None:
            raise Unauthenticated("unknown API token")
        if token.revoked_at is not None:  # a deleted user's tokens are all revoked
            raise Unauthenticated(f"API token {token.token_id} was revoked")
        if token.user not in self.users:
            raise Unauthenticated("unknown API token")
        if token.expires_at is not None and token.expires_at <= utcnow():
            expired = token.expires_at.astimezone(UTC)
            raise Unauthenticated(
                f"API token {token.token_id} expired at {expired:%Y-%m-%d %H:%M:%S} UTC"
            )
        user = self.users[token.user]
        return Principal(Kind.USER, user.name, Role(user.role), token.token_id)

    def _runner(self, hashed: str) -> Principal:
        hostname = self._runner_hashes.get(hashed)
        credential = self._runners.get(hostname) if hostname else None
        if credential is None or credential.secret_hash != hashed:
            raise Unauthenticated("unknown runner credential")
        if credential.revoked_at is not None:
            raise Unauthenticated(
                f"the credential of runner {hostname} was revoked: remove it from the "
                "runner's state_dir and join again with the join token"
            )
        return Principal(Kind.RUNNER, credential.hostname)

    def on_revoked(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call ``listener`` whenever a token is revoked, a user deleted or given another
        role, so what such a token holds open (a stream, an SSH session) ends then, idle or
        not; returns what stops the calls."""
        self._revoked_listeners.add(listener)
        return lambda: self._revoked_listeners.discard(listener)

    def _tell_revoked(self) -> None:
        for listener in list(self._revoked_listeners):
            listener()

    # ----- users ------------------------------------------------------------------------

    async def create_user(
        self, name: str, role: Role, reclaim: bool = False, by: Principal | None = None
    ) -> UserRecord:
        """A new user. Tasks are owned by name: a name a deleted user's tasks or tokens
        still bear is refused unless ``reclaim`` (a newcomer must not inherit them). ``by``:
        the admin asking (None: the Host itself)."""
        if (problem := user_name_problem(name)) is not None:
            raise InvalidArgument(f"name: {name!r} {problem}")
        async with self._user_changes:
            self._still_admin(by)
            return await self._create_user(name, role, reclaim)

    def _still_admin(self, by: Principal | None) -> None:
        """An admin's change of users, checked again in its turn: one whose caller was made
        another role, or lost their token, while it waited for changes before it is
        refused; it was authorised when it came in."""
        if by is None or not by.token_id:  # the Host itself, or a Host without tokens
            return
        if not self.again(by).has(Role.ADMIN):
            raise PermissionDenied(f"{by.name} is no longer an admin: the change was not made")

    async def _create_user(self, name: str, role: Role, reclaim: bool) -> UserRecord:
        if name in self.users:
            raise FailedPrecondition(f"name: user {name!r} exists already")
        if not reclaim and await self._name_used(name):
            raise FailedPrecondition(
                f"name: {name!r} belonged to a deleted user, whose tasks and tokens keep it: "
                "choose another name, or reclaim it (hakuriver.admin user add --reclaim) to "
                "give that user's tasks to the new one"
            )
        record = UserRecord(name=name, role=role.value, created_at=utcnow())
        await self.store.run(self._merge, record)
        self.users[name] = record
        return record

    async def known(self, name: str) -> bool:
        """Whether ``name`` is a user's, or was a deleted user's (their tasks or tokens keep
        it)."""
        return name in self.users or await self._name_used(name)

    async def _name_used(self, name: str) -> bool:
        if any(token.user == name for token in self._tokens.values()):
            return True
        return await self.store.run(self.store.owns_tasks, name)

    def user(self, name: str, field: str = "name") -> UserRecord:
        """User ``name``, NotFound naming the request's ``field`` that named them if none."""
        record = self.users.get(name)
        if record is None:
            raise NotFound(f"{field}: user {name!r} not found")
        return record

    async def delete_user(self, name: str, by: Principal | None = None) -> int:
        """Remove a user and revoke their tokens; how many tokens were revoked."""
        async with self._user_changes:
            self._still_admin(by)
            return await self._delete_user_now(name)

    def _not_the_last_admin(self, record: UserRecord) -> None:
        admins = [u for u in self.users.values() if u.role == Role.ADMIN]
        if record.role == Role.ADMIN and len(admins) == 1:
            raise FailedPrecondition(f"name: {record.name!r} is the last admin")

    async def set_role(
        self, name: str, role: Role, by: Principal | None = None
    ) -> tuple[Role, UserRecord]:
        """Give a user another role: their tokens carry it from their next call, and what
        they hold open ends (``on_revoked``), authorised as it was under the old one.
        Returns the role it replaced (read in turn, as changes made at once may race)."""
        async with self._user_changes:
            self._still_admin(by)
            record = self.user(name)
            before = Role(record.role)
            if before == role:
                return before, record
            if role != Role.ADMIN:
                self._not_the_last_admin(record)
            changed = UserRecord(name=record.name, role=role.value, created_at=record.created_at)
            await self.store.run(self._merge, changed)
            self.users[name] = changed
        self._tell_revoked()
        return before, changed

    async def _delete_user_now(self, name: str) -> int:
        record = self.user(name)
        self._not_the_last_admin(record)
        async with self._revocations:
            revoked = [t for t in self._tokens.values() if t.user == name and t.revoked_at is None]
            now = utcnow()
            for token in revoked:
                token.revoked_at = now
            try:
                await self.store.run(self._delete_user, record, revoked)
            except Exception:  # as ``_revoke``: deleted again, they are revoked with the user
                for token in revoked:
                    token.revoked_at = None
                raise
        del self.users[name]
        self._tell_revoked()
        return len(revoked)

    # ----- API tokens -------------------------------------------------------------------

    async def create_token(
        self,
        user: str,
        description: str,
        expires_at: datetime | None,
        secret: str = "",
        by: Principal | None = None,
    ) -> IssuedToken:
        """A new token of ``user``; ``secret`` when given (written out already), else a new
        one. Made while no user is removed, so one made as its user is deleted is either
        revoked with the others or refused, never left valid for whoever reclaims the name.
        ``by``: the caller asking (None: the Host itself, held to no limit)."""
        async with self._user_changes:
            if by is not None:
                self._may_still_make_token(user, by)
            return await self._create_token(user, description, expires_at, secret)

    def _may_still_make_token(self, user: str, by: Principal) -> None:
        """A token asked for, checked in its turn as other changes of users are: its caller
        still holds their token (and, for another user's, is still an admin), and ``user``
        holds fewer than MAX_ACTIVE_TOKENS (two made at once are counted one after the
        other)."""
        if user == by.name:
            self.again(by)
        else:
            self._still_admin(by)
        if len(self.tokens(user, include_inactive=False)) >= limits.MAX_ACTIVE_TOKENS:
            raise FailedPrecondition(
                f"user: {user} holds {limits.MAX_ACTIVE_TOKENS} active tokens, the most one "
                "may: revoke one first (hakuriver.admin token list, token revoke)"
            )

    async def _create_token(
        self, user: str, description: str, expires_at: datetime | None, secret: str
    ) -> IssuedToken:
        self.user(user, "user")
        size = len(description.encode())
        at_most("description", size, limits.MAX_TOKEN_DESCRIPTION_BYTES, " bytes")
        if expires_at is not None and expires_at <= utcnow():
            raise InvalidArgument("expires_at: must be in the future")
        secret = secret or new_secret(API_TOKEN_PREFIX)
        record = ApiTokenRecord(
            token_id=secrets.token_hex(6),
            secret_hash=digest(secret),
            user=user,
            description=description,
            created_at=utcnow(),
            expires_at=expires_at,
        )
        await self.store.run(self._merge, record)
        self._tokens[record.secret_hash] = record
        self._token_ids[record.token_id] = record
        return IssuedToken(record, secret)

    def tokens(self, user: str | None, include_inactive: bool) -> list[ApiTokenRecord]:
        """Tokens of ``user`` (None: everybody's), oldest first."""
        now = utcnow()
        found = [
            t
            for t in self._tokens.values()
            if (user is None or t.user == user)
            and (
                include_inactive
                or (t.revoked_at is None and (t.expires_at is None or t.expires_at > now))
            )
        ]
        return sorted(found, key=lambda t: t.created_at)

    def token(self, token_id: str) -> ApiTokenRecord:
        record = self._token_ids.get(token_id)
        if record is None:
            raise NotFound(f"token_id: token {token_id!r} not found")
        return record

    async def revoke_token(self, record: ApiTokenRecord) -> bool:
        """Revoke the token; False if it was revoked already (nothing changes)."""
        async with self._revocations:
            if record.revoked_at is not None:
                return False
            await self._revoke(record)
        self._tell_revoked()
        return True

    async def _revoke(self, record: ApiTokenRecord | RunnerCredentialRecord) -> None:
        """Mark ``record`` revoked and store it; unmarked again if the database refuses (it
        is away): a revocation asked again is then made, stored and audited, where it was
        taken for made already and the Host let the token in again after a restart."""
        record.revoked_at = utcnow()
        try:
            await self.store.run(self._merge, record)
        except Exception:
            record.revoked_at = None
            raise

    # ----- Runner credentials -----------------------------------------------------------

    def runner_registered(self, hostname: str) -> bool:
        """True when ``hostname`` holds a credential that was not revoked, or is being
        issued one (of two joiners racing for a name, only the first gets it)."""
        if hostname in self._issuing:
            return True
        credential = self._runners.get(hostname)
        return credential is not None and credential.revoked_at is None

    async def issue_runner_credential(self, hostname: str) -> str:
        """A new credential for ``hostname`` (replacing a revoked one); its secret. The name
        counts as registered from this call on, while the record is written."""
        secret = new_secret(RUNNER_CREDENTIAL_PREFIX)
        record = RunnerCredentialRecord(
            hostname=hostname, secret_hash=digest(secret), issued_at=utcnow()
        )
        self._issuing.add(hostname)
        try:
            await self._credential_writes.submit([record])
        finally:
            self._issuing.discard(hostname)
        old = self._runners.get(hostname)
        if old is not None:
            self._runner_hashes.pop(old.secret_hash, None)
        self._runners[hostname] = record
        self._runner_hashes[record.secret_hash] = hostname
        return secret

    def runner_credentials(self) -> list[RunnerCredentialRecord]:
        return sorted(self._runners.values(), key=lambda r: r.hostname)

    async def revoke_runner(self, hostname: str) -> tuple[RunnerCredentialRecord, bool]:
        """Revoke the Runner's credential; and whether this did (not: revoked already)."""
        credential = self._runners.get(hostname)
        if credential is None:
            raise NotFound(f"hostname: runner {hostname!r} holds no credential")
        async with self._revocations:
            if credential.revoked_at is not None:
                return credential, False
            await self._revoke(credential)
        return credential, True

    # ----- on the store thread ----------------------------------------------------------

    def _merge(self, record: UserRecord | ApiTokenRecord | RunnerCredentialRecord) -> None:
        self._merge_all([record])

    def _merge_all(
        self, records: list[UserRecord | ApiTokenRecord | RunnerCredentialRecord]
    ) -> None:
        with Session(self.store.engine) as session:
            for record in records:
                session.merge(record)
            session.commit()

    def _delete_user(self, record: UserRecord, revoked: list[ApiTokenRecord]) -> None:
        with Session(self.store.engine) as session:
            for token in revoked:
                session.merge(token)
            found = session.get(UserRecord, record.name)
            if found is not None:
                session.delete(found)
            session.commit()
