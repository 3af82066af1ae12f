"""``hakuriver.admin``: users, API tokens, runner credentials, the audit log and forgetting
old tasks.

Every command is one call of AccessService, AuditService or TaskService.PruneTasks; the
Host decides who may make it (docs/security.md). A token's secret is printed once, when it
is created: the Host keeps only its hash.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from hakuriver_cli import direct
from hakuriver_cli.call_error import CallError, Status
from hakuriver_cli.connection import ask, config_or_fail, fail, host_link, parsed, unary
from hakuriver_cli.link import access_stub, audit_stub, task_stub
from hakuriver_cli.render import (
    outcome_name,
    print_json,
    role_name,
    show_list,
    to_dict,
    when,
)
from hakuriver_common import commands as cli
from hakuriver_common.credentials import TOKEN_ENV, write_secret
from hakuriver_common.roles import AuditOutcome, Role
from hakuriver_common.service import ConfigOption, GlobalOptions, JsonOption, tool_app
from hakuriver_common.units import format_size

if TYPE_CHECKING:
    from hakuriver_common.proto.hakuriver.v1 import (
        access_pb2,
        access_service_pb2_grpc,
        audit_service_pb2 as aupb,
        task_service_pb2_grpc,
    )

# The generated protos (and the transports) are imported by the commands that call the Host,
# not here (see hakuriver_cli/task.py).

T = TypeVar("T")

app = tool_app("Users, API tokens, runner credentials, the audit log and old tasks.")
user_app = cli.App(no_args_is_help=True)
token_app = cli.App(no_args_is_help=True)
runner_app = cli.App(no_args_is_help=True)
task_app = cli.App(no_args_is_help=True)


def _group(ctx: cli.Context, config: ConfigOption = None, json: JsonOption = False) -> None:
    """Hand --config and --json given before the group's command on to it."""
    ctx.obj = GlobalOptions(config, json)


for _sub, _name, _help in (
    (user_app, "user", "Users and their roles (admin)."),
    (token_app, "token", "API tokens: create, list, revoke (your own; an admin: anybody's)."),
    (runner_app, "runner", "Credentials Runners received on joining (admin)."),
    (task_app, "task", "Forget tasks that ended long ago, with their output (admin)."),
):
    _sub.callback()(_group)
    app.add_typer(_sub, name=_name, help=_help)


def _access(
    config: Path | None, call: Callable[[access_service_pb2_grpc.AccessServiceStub], T]
) -> T:
    return ask(config, access_stub, call)


# ----- whoami -------------------------------------------------------------------------


@app.command()
def whoami(config: ConfigOption = None, json: JsonOption = False) -> None:
    """Who the Host takes you for: your user name, role and token id."""
    from hakuriver_common.proto.hakuriver.v1 import access_service_pb2 as apb

    me: apb.WhoAmIResponse = _access(config, lambda s: unary(s.WhoAmI, apb.WhoAmIRequest()))
    if json:
        print_json(to_dict(me))
        return
    cli.echo(f"{me.user} ({role_name(me.role)}), token {me.token_id or '-'}")


# ----- users --------------------------------------------------------------------------

NameArgument = Annotated[str, cli.Argument(help="User name.", show_default=False)]


@user_app.command("add")
def user_add(
    name: NameArgument,
    role: Annotated[Role, cli.Option(help="user, operator or admin.")] = Role.USER,
    reclaim: Annotated[
        bool,
        cli.Option(
            help="Take a deleted user's name back: the new user owns that user's tasks "
            "(their output, kill, SSH). Refused without it."
        ),
    ] = False,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Add a user with a role; give them a token with: token create --user NAME."""
    from hakuriver_common.proto.hakuriver.v1 import access_service_pb2 as apb

    request = apb.CreateUserRequest(name=name, role=role.pb, reclaim=reclaim)
    user = _access(config, lambda s: unary(s.CreateUser, request).user)
    if json:
        print_json(to_dict(user))
        return
    cli.echo(f"added user {user.name} ({role_name(user.role)})")
    cli.echo(f"give them a token: hakuriver.admin token create --user {user.name} --save PATH")


@user_app.command("set-role")
def user_set_role(
    name: NameArgument,
    role: Annotated[Role, cli.Argument(help="user, operator or admin.", show_default=False)],
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Give a user another role; their tokens carry it at once (open streams and SSH
    sessions end, to be made again)."""
    from hakuriver_common.proto.hakuriver.v1 import access_service_pb2 as apb

    request = apb.SetUserRoleRequest(name=name, role=role.pb)
    reply = _access(config, lambda s: unary(s.SetUserRole, request))
    user = reply.user
    if json:
        print_json(to_dict(user))
        return
    # previous_role unset: a Host from before it, which does not say
    already = reply.previous_role == user.role
    cli.echo(f"user {user.name} is {'already' if already else 'now'} {role_name(user.role)}")


def _user_row(user: access_pb2.User) -> list[str]:
    return [user.name, role_name(user.role), when(user.created_at, user.HasField("created_at"))]


@user_app.command("list")
def user_list(config: ConfigOption = None, json: JsonOption = False) -> None:
    """List users and their roles."""
    from hakuriver_common.proto.hakuriver.v1 import access_service_pb2 as apb

    users = _access(config, lambda s: unary(s.ListUsers, apb.ListUsersRequest()).users)
    show_list(json, users, "users", ("name", "role", "created"), _user_row)


@user_app.command("remove")
def user_remove(name: NameArgument, config: ConfigOption = None, json: JsonOption = False) -> None:
    """Remove a user and revoke their tokens; their tasks keep running."""
    from hakuriver_common.proto.hakuriver.v1 import access_service_pb2 as apb

    request = apb.DeleteUserRequest(name=name)
    revoked = _access(config, lambda s: unary(s.DeleteUser, request).revoked_tokens)
    if json:
        print_json({"user": name, "revoked_tokens": revoked})
        return
    cli.echo(f"removed user {name}; revoked {revoked} token(s)")


# ----- tokens -------------------------------------------------------------------------

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_expiry(text: str, now: datetime | None = None) -> datetime:
    """When a token made now expires: '90s', '12h', '30d' from now, or an ISO date/time
    (local time unless it names a zone)."""
    now = now or datetime.now(UTC)
    try:
        if text[:-1].isdigit() and text[-1] in _UNITS:
            moment = now + timedelta(seconds=int(text[:-1]) * _UNITS[text[-1]])
        else:
            moment = datetime.fromisoformat(text)
            moment = moment if moment.tzinfo else moment.astimezone()
            moment.astimezone(UTC)  # in range as a UTC time too (what the Host stores)
    except ValueError:
        raise ValueError(
            f"--expires {text!r}: use 90s, 12h, 30d or an ISO date like 2027-01-31"
        ) from None
    except OverflowError:
        raise ValueError(f"--expires {text!r} is too far ahead (the year 9999 at most)") from None
    if moment <= now:
        raise ValueError(f"--expires {text!r} is in the past")
    return moment


def _token_state(token: access_pb2.ApiToken) -> str:
    if token.HasField("revoked_at"):
        return "revoked"
    if token.HasField("expires_at") and token.expires_at.ToDatetime(tzinfo=UTC) <= datetime.now(
        UTC
    ):
        return "expired"
    return "active"


def _expires(token: access_pb2.ApiToken) -> str:
    return when(token.expires_at, True) if token.HasField("expires_at") else "never"


def _save_target(save: Path | None) -> Path | None:
    """Where --save writes; refused before the token is made if a file is there already or
    its folder is not one this user may write in."""
    if save is None:
        return None
    path = save.expanduser()
    if path.exists():
        fail(f"{path} exists: --save writes a new file (remove it or choose another path)", 2)
    folder = path.parent
    if not folder.is_dir():
        fail(f"--save {path}: {folder} is not a folder", 2)
    if not os.access(folder, os.W_OK | os.X_OK):
        fail(f"--save {path}: cannot write in {folder}", 2)
    return path


@token_app.command("create")
def token_create(
    user: Annotated[
        str, cli.Option(help="Whose token (default: yours; another's needs admin).")
    ] = "",
    description: Annotated[str, cli.Option(help="What the token is for.")] = "",
    expires: Annotated[
        str,
        cli.Option(
            help="Expire after 90s, 12h, 30d, or at an ISO date/time (default: never; a "
            "non-admin's, no later than the token making it).",
            show_default=False,
        ),
    ] = "",
    save: Annotated[
        Path | None,
        cli.Option(
            help="Write the secret to this new file (mode 0600) instead of printing it.",
            show_default=False,
        ),
    ] = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Create an API token. Its secret is shown (or saved) only now: the Host keeps a hash."""
    from hakuriver_common.proto.hakuriver.v1 import access_service_pb2 as apb

    request = apb.CreateTokenRequest(user=user, description=description)
    if expires:
        [moment] = parsed([expires], parse_expiry)
        request.expires_at.FromDatetime(moment)
    target = _save_target(save)
    cfg = config_or_fail(config)
    with host_link(cfg) as link:
        stub = access_stub(link)
        made: apb.CreateTokenResponse = unary(stub.CreateToken, request)
        token = made.token
        about = f"token {token.token_id} for {token.user} (expires: {_expires(token)})"
        if target is not None:
            try:
                write_secret(target, made.secret)
            except OSError as exc:  # nobody has the secret: the token goes at once
                lost = f"cannot write {target}: {exc.strerror}; {about}"
                try:
                    unary(stub.RevokeToken, apb.RevokeTokenRequest(token_id=token.token_id))
                except CallError:
                    fail(
                        f"{lost} was made but could not be revoked: revoke it "
                        f"(hakuriver.admin token revoke {token.token_id})"
                    )
                fail(f"{lost} was revoked again")
    if json:
        body: dict[str, Any] = {"token": to_dict(token)}
        body.update({"saved_to": str(target)} if target else {"secret": made.secret})
        print_json(body)
    elif target is not None:
        cli.echo(f"saved {about} to {target} (mode 0600)")
    else:
        cli.echo(made.secret)
    # The file the tools read: as this config names it for one's own token; another user's
    # config names theirs.
    where = "their auth.credentials_file" if user else cfg.auth.credentials_file
    keep = f"{where} (chmod 600) or ${TOKEN_ENV}"
    if target is None:
        cli.echo(f"warning: {about} is shown only now; keep it in {keep}", err=True)
    else:
        cli.echo(f"{token.user} keeps it in {keep}", err=True)


TOKEN_COLUMNS = ("token_id", "user", "state", "description", "created", "expires")


def _token_row(token: access_pb2.ApiToken) -> list[str]:
    return [
        token.token_id,
        token.user,
        _token_state(token),
        token.description or "-",
        when(token.created_at, token.HasField("created_at")),
        _expires(token),
    ]


@token_app.command("list")
def token_list(
    user: Annotated[str, cli.Option(help="Only this user's tokens (admin).")] = "",
    all_: Annotated[bool, cli.Option("--all", help="Everybody's tokens (admin).")] = False,
    include_inactive: Annotated[
        bool, cli.Option("--include-inactive", help="Also revoked and expired tokens.")
    ] = False,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """List API tokens (yours unless --user or --all), never their secrets."""
    from hakuriver_common.proto.hakuriver.v1 import access_service_pb2 as apb

    if user and all_:
        fail("--user and --all exclude each other", 2)
    request = apb.ListTokensRequest(user="*" if all_ else user, include_inactive=include_inactive)
    tokens = _access(config, lambda s: unary(s.ListTokens, request).tokens)
    show_list(json, tokens, "tokens", TOKEN_COLUMNS, _token_row)


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[str, cli.Argument(help="Token id (token list).", show_default=False)],
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Revoke an API token: the Host refuses it from now on."""
    from hakuriver_common.proto.hakuriver.v1 import access_service_pb2 as apb

    request = apb.RevokeTokenRequest(token_id=token_id)
    reply = _access(config, lambda s: unary(s.RevokeToken, request))
    token = reply.token
    if json:
        print_json(to_dict(token))
        return
    if reply.already_revoked:
        cli.echo(f"token {token.token_id} of {token.user} was already revoked")
        return
    cli.echo(f"revoked token {token.token_id} of {token.user}")


# ----- runner credentials -------------------------------------------------------------


def _runner_row(credential: access_pb2.RunnerCredential) -> list[str]:
    revoked = credential.HasField("revoked_at")
    return [
        credential.hostname,
        "revoked" if revoked else "active",
        when(credential.issued_at, credential.HasField("issued_at")),
        when(credential.revoked_at, revoked),
    ]


@runner_app.command("list")
def runner_list(config: ConfigOption = None, json: JsonOption = False) -> None:
    """List the credentials Runners received on their first join."""
    from hakuriver_common.proto.hakuriver.v1 import access_service_pb2 as apb

    request = apb.ListRunnerCredentialsRequest()
    credentials = _access(config, lambda s: unary(s.ListRunnerCredentials, request).credentials)
    show_list(json, credentials, "runners", ("hostname", "state", "issued", "revoked"), _runner_row)


@runner_app.command("revoke")
def runner_revoke(
    hostname: Annotated[str, cli.Argument(help="Node hostname.", show_default=False)],
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Revoke a Runner's credential and close its stream; it may join again only with the
    join token."""
    from hakuriver_common.proto.hakuriver.v1 import access_service_pb2 as apb

    request = apb.RevokeRunnerCredentialRequest(hostname=hostname)
    reply = _access(config, lambda s: unary(s.RevokeRunnerCredential, request))
    credential = reply.credential
    if json:
        print_json(to_dict(credential))
        return
    if reply.already_revoked:
        cli.echo(f"the credential of runner {credential.hostname} was already revoked")
        return
    cli.echo(
        f"revoked the credential of runner {credential.hostname}; to join again it needs the "
        "join token (and its old credential removed from its state_dir)"
    )


# ----- audit --------------------------------------------------------------------------

AUDIT_COLUMNS = ("id", "at", "actor", "role", "action", "target", "outcome", "detail", "peer")


def _audit_row(event: aupb.AuditEvent) -> list[str]:
    return [
        str(event.id),
        when(event.at, event.HasField("at")),
        event.actor,
        role_name(event.role) if event.role else "-",
        event.action,
        event.target or "-",
        outcome_name(event.outcome),
        event.detail or "-",
        event.peer or "-",
    ]


@app.command()
def audit(
    limit: Annotated[int, cli.Option(min=1, max=1000, help="At most this many events.")] = 100,
    actor: Annotated[str, cli.Option(help="Only this actor (user or runner:HOST).")] = "",
    action: Annotated[str, cli.Option(help="Only this action, e.g. task.submit.")] = "",
    refused: Annotated[bool, cli.Option("--refused", help="Only refusals.")] = False,
    before: Annotated[
        int, cli.Option(help="Only events older than this id (paging).", **cli.INT64)
    ] = 0,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """The audit log, newest first: who did what, and every refusal."""
    from hakuriver_common.proto.hakuriver.v1 import audit_service_pb2 as aupb

    request = aupb.ListAuditEventsRequest(
        limit=limit,
        before_id=before,
        actor=actor,
        action=action,
        outcome=AuditOutcome.REFUSED.pb if refused else aupb.AUDIT_OUTCOME_UNSPECIFIED,
    )
    events = ask(
        config,
        audit_stub,
        lambda s: unary(s.ListAuditEvents, request).events,
    )
    show_list(json, events, "audit", AUDIT_COLUMNS, _audit_row)


# ----- old tasks ----------------------------------------------------------------------

# How long ``task prune`` waits for the Host: forgetting a long history, a slice at a time,
# takes minutes (the Host carries it through if the tool stops waiting).
PRUNE_SECONDS = 3600.0


@task_app.command("prune")
def task_prune(
    older_than: Annotated[
        float,
        cli.Option(
            "--older-than",
            help="Forget the tasks that ended more than this many days ago (fractions allowed).",
            show_default=False,
        ),
    ],
    dry_run: Annotated[
        bool, cli.Option("--dry-run", help="Only say what would be forgotten.")
    ] = False,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Forget ended tasks: their rows, timelines and output files. Tasks that have not ended
    stay, and a batch stays whole while one of its tasks has not ended or ended later."""
    from hakuriver_common.proto.hakuriver.v1 import task_service_pb2 as tpb

    request = tpb.PruneTasksRequest(older_than_days=older_than, dry_run=dry_run)

    def prune(stub: task_service_pb2_grpc.TaskServiceStub) -> tpb.PruneTasksResponse:
        try:
            return unary(stub.PruneTasks, request, PRUNE_SECONDS)
        except CallError as exc:
            if exc.status is not Status.DEADLINE_EXCEEDED or dry_run:
                raise
            fail(
                f"the prune did not end within {PRUNE_SECONDS:.0f} s; the Host goes on with "
                "it, and the audit log says what went once it ends: "
                "hakuriver.admin audit --action task.prune"
            )

    pruned = ask(config, task_stub, prune)
    if json:
        fields = ("tasks", "batches", "events", "output_files", "output_bytes")
        print_json({"dry_run": dry_run, **{name: getattr(pruned, name) for name in fields}})
        return
    what = (
        f"{pruned.tasks} task(s) ({pruned.batches} batch(es)), {pruned.events} event(s), "
        f"{pruned.output_files} output file(s) ({format_size(pruned.output_bytes)})"
    )
    if dry_run:
        cli.echo(f"would forget {what} that ended more than {older_than:g} days ago")
    else:
        cli.echo(f"forgot {what} that ended more than {older_than:g} days ago")


def run() -> None:
    direct.run(app, "hakuriver.admin")


if __name__ == "__main__":
    run()
