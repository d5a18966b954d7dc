"""Enrolled agents and their access requests: the quick, reviewed path back to a grant.

An enrolled key grants nothing: it may only open `request@` on the gateway and ask.
A request becomes a grant only through a human's `bastion requests approve` (never
the requester's own identity) or a target's auto-approval rule; either way the grant
is signed, recorded and audited in the same transaction that decides the request, so
one request yields at most one grant. The certificate line is kept with the request
for the gateway to hand to the waiting agent; a certificate is public, not a secret.
"""

from __future__ import annotations

import secrets
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from bastion import policy, requestpolicy
from bastion.errors import AlreadyExists, InvalidInput, NotFound
from bastion.keyfiles import fingerprint, parse_public_key, public_line, read_public_key
from bastion.models import AccessRequest, Agent, RequestState
from bastion.service import Bastion, GrantTerms
from bastion.store import StoreTx
from bastion.timespec import format_duration

AUTO_APPROVER = "auto-approval"
# Requests one agent may have waiting at once: enough for real work, not for a flood of
# notifications to the humans who decide.
MAX_PENDING_PER_AGENT = 3


class AccessRequests:
    def __init__(self, bastion: Bastion) -> None:
        self.bastion = bastion

    @property
    def _actor(self) -> str:
        return self.bastion.actor

    # -- enrollment -----------------------------------------------------------

    def enroll(
        self, name: str, pubkey: Path, may_request: list[str], max_ttl: timedelta | None
    ) -> Agent:
        name = policy.check_agent_name(name)
        key = read_public_key(pubkey)
        targets = _may_request(may_request)
        known = {t.name for t in self.bastion.list_targets()}
        unknown = [t for t in targets if t != "*" and t not in known]
        if unknown:
            raise NotFound(
                f"unknown target {unknown[0]!r} in --may-request (see `bastion target list`)"
            )
        if max_ttl is not None and max_ttl > self.bastion.home.config.grants.max_ttl:
            raise InvalidInput(
                f"--max-ttl {format_duration(max_ttl)} is over grants.max_ttl"
                f" ({format_duration(self.bastion.home.config.grants.max_ttl)})"
            )
        now = self.bastion.clock.now()
        agent = Agent(
            name=name,
            public_key=public_line(key),
            key_fingerprint=fingerprint(key),
            may_request=targets,
            max_ttl=max_ttl,
            created_at=now,
            created_by=self._actor,
        )
        with self.bastion.store.transaction() as tx:
            if tx.get_agent(name) is not None:
                raise AlreadyExists(
                    f"agent {name} is already enrolled (`bastion agent remove {name}` first)"
                )
            holder = tx.get_agent_by_fingerprint(agent.key_fingerprint)
            if holder is not None:
                raise AlreadyExists(
                    f"key {agent.key_fingerprint} is already enrolled for agent {holder.name}"
                )
            tx.insert_agent(agent)
            tx.append_audit(now, self._actor, "agent.enrolled", agent.to_dict())
        return agent

    def list_agents(self) -> list[Agent]:
        return self.bastion.store.list_agents()

    def get_agent(self, name: str) -> Agent:
        agent = self.bastion.store.get_agent(name)
        if agent is None:
            raise NotFound(f"unknown agent {name!r} (see `bastion agent list`)")
        return agent

    def remove_agent(self, name: str) -> Agent:
        now = self.bastion.clock.now()
        with self.bastion.store.transaction() as tx:
            agent = tx.get_agent(name)
            if agent is None:
                raise NotFound(f"unknown agent {name!r} (see `bastion agent list`)")
            tx.delete_agent(name)
            tx.append_audit(
                now,
                self._actor,
                "agent.removed",
                {"name": name, "key_fingerprint": agent.key_fingerprint},
            )
        return agent

    def agent_for_key(self, key_fingerprint: str) -> Agent | None:
        return self.bastion.store.get_agent_by_fingerprint(key_fingerprint)

    # -- requests -------------------------------------------------------------

    def list_requests(
        self, include_all: bool = False, task: str | None = None
    ) -> list[AccessRequest]:
        """Requests still waiting (every request with `include_all`), oldest first."""
        now = self.bastion.clock.now()
        found = self.bastion.store.list_requests(pending_only=not include_all, task=task)
        return [r for r in found if include_all or r.expires_at > now]

    def abandon_node(self, node: str) -> list[str]:
        """At a gateway's start: requests its previous run left waiting can't be answered."""
        now = self.bastion.clock.now()
        ended = []
        with self.bastion.store.transaction() as tx:
            for request in self.bastion.store.list_requests(pending_only=True):
                if request.node != node:
                    continue
                why = "the bastion restarted while the request waited"
                tx.decide_request(request.id, RequestState.EXPIRED, now, "gateway", why)
                tx.append_audit(
                    now,
                    "gateway",
                    "request.decided",
                    _decision(request, RequestState.EXPIRED, why, None),
                )
                ended.append(request.id)
        return ended

    def get_request(self, request_id: str) -> AccessRequest:
        found = self.bastion.store.get_request(request_id)
        if found is None:
            raise NotFound(f"unknown request {request_id!r} (see `bastion requests list`)")
        return found

    def open(self, agent: Agent, command: str | None, client: str, node: str) -> AccessRequest:
        """An agent asks (on the gateway). Refusals raise InvalidInput and are audited."""
        now = self.bastion.clock.now()
        config = self.bastion.home.config
        try:
            waiting = [
                r
                for r in self.bastion.store.list_requests(pending_only=True)
                if r.agent == agent.name and r.expires_at > now
            ]
            if len(waiting) >= MAX_PENDING_PER_AGENT:
                raise InvalidInput(
                    f"{len(waiting)} requests of {agent.name} are already waiting"
                    f" ({', '.join(r.id for r in waiting)}); wait for a decision"
                )
            args = requestpolicy.parse_request_command(command)
            policy.check_task_name(args.task)
            known = frozenset(t.name for t in self.bastion.list_targets())
            verdict = requestpolicy.decide(
                agent=agent.name,
                may_request=agent.may_request,
                agent_max_ttl=agent.max_ttl,
                args=args,
                known_targets=known,
                targets={name: config.request_policy(name) for name in args.targets},
                max_ttl=min(config.requests.max_ttl, config.grants.max_ttl),
                default_ttl=config.requests.default_ttl,
                min_ttl=config.grants.min_ttl,
                now=now,
            )
        except InvalidInput as exc:
            with self.bastion.store.transaction() as tx:
                tx.append_audit(
                    now,
                    agent.name,
                    "request.refused",
                    {"agent": agent.name, "client": client, "command": command, "reason": str(exc)},
                )
            raise
        request = AccessRequest(
            id=_new_request_id(),
            agent=agent.name,
            key_fingerprint=agent.key_fingerprint,
            targets=args.targets,
            task=args.task,
            reason=args.reason,
            ttl=verdict.ttl,
            client=client,
            node=node,
            requested_at=now,
            expires_at=now + config.requests.timeout,
        )
        with self.bastion.store.transaction() as tx:
            tx.insert_request(request)
            tx.append_audit(now, agent.name, "request.created", request.to_dict())
        if verdict.auto_rule is None:
            return request
        return self._approve(request.id, None, verdict.auto_rule, AUTO_APPROVER)

    def approve(
        self, request_id: str, ttl: timedelta | None = None, reason: str = ""
    ) -> AccessRequest:
        return self._approve(request_id, ttl, reason or "approved", self._actor)

    def deny(self, request_id: str, reason: str) -> AccessRequest:
        if not reason.strip():
            raise InvalidInput("give --reason: the agent is told why")
        return self._decide(request_id, RequestState.DENIED, reason, self._actor)

    def expire(self, request_id: str) -> AccessRequest:
        """Nobody decided in time (the gateway's wait ended); a decision that won stays."""
        return self._settle(request_id, RequestState.EXPIRED, "nobody decided in time")

    def withdraw(self, request_id: str) -> AccessRequest:
        return self._settle(request_id, RequestState.WITHDRAWN, "the agent hung up while waiting")

    def _settle(self, request_id: str, state: RequestState, why: str) -> AccessRequest:
        try:
            return self._decide(request_id, state, why, "gateway", late_ok=True)
        except AlreadyExists:
            return self.get_request(request_id)

    def _decide(
        self,
        request_id: str,
        state: RequestState,
        reason: str,
        actor: str,
        late_ok: bool = False,
    ) -> AccessRequest:
        now = self.bastion.clock.now()
        with self.bastion.store.transaction() as tx:
            request = self._pending(tx, request_id, actor, late_ok)
            tx.decide_request(request_id, state, now, actor, reason)
            tx.append_audit(now, actor, "request.decided", _decision(request, state, reason, None))
        return self.get_request(request_id)

    def _approve(
        self, request_id: str, ttl: timedelta | None, reason: str, actor: str
    ) -> AccessRequest:
        bastion = self.bastion
        config = bastion.home.config
        ca = bastion.load_ca()
        now = bastion.clock.now()
        with bastion.store.transaction() as tx:
            request = self._pending(tx, request_id, actor, late_ok=False)
            agent = tx.get_agent(request.agent)
            if agent is None or agent.key_fingerprint != request.key_fingerprint:
                raise InvalidInput(
                    f"agent {request.agent} was removed or re-enrolled with another key"
                    f" since {request_id}; deny it"
                )
            if ttl is not None:
                # The approver may change the TTL, within the same limits as the agent.
                limits = [
                    (
                        "the longest a request may ask for",
                        min(config.requests.max_ttl, config.grants.max_ttl),
                    ),
                    ("the agent's max-ttl", agent.max_ttl),
                ] + [
                    (f"target {t}'s request_max_ttl", config.request_policy(t).max_ttl)
                    for t in request.targets
                ]
                ttl = requestpolicy.limit_ttl(ttl, ttl, limits, config.grants.min_ttl)
            chosen = ttl or request.ttl
            targets = [bastion.get_target(name) for name in request.targets]
            perms = policy.certificate_permissions(targets, no_pty=False, no_port_forwarding=False)
            terms = GrantTerms(
                agent=request.agent,
                task=request.task,
                reason=request.reason,
                targets=request.targets,
                window=policy.grant_window(now, chosen, config.grants),
                permit_pty=perms.permit_pty,
                permit_port_forwarding=perms.permit_port_forwarding,
            )
            key = parse_public_key(agent.public_key, f"agent {agent.name}'s enrolled key")
            grant, cert_line = bastion.sign_grant(
                tx, ca, terms, key, now, audit_extra={"request": request_id}, actor=actor
            )
            tx.decide_request(
                request_id,
                RequestState.APPROVED,
                now,
                actor,
                reason,
                grant_id=grant.id,
                certificate=cert_line,
                ttl=chosen,
            )
            approved = replace(request, ttl=chosen)
            tx.append_audit(
                now,
                actor,
                "request.decided",
                _decision(approved, RequestState.APPROVED, reason, grant.id),
            )
        return self.get_request(request_id)

    def _pending(self, tx: StoreTx, request_id: str, actor: str, late_ok: bool) -> AccessRequest:
        request = tx.get_request(request_id)
        if request is None:
            raise NotFound(f"unknown request {request_id!r} (see `bastion requests list`)")
        if request.state is not RequestState.PENDING:
            by = f" by {request.decided_by}" if request.decided_by else ""
            raise AlreadyExists(f"request {request_id} is already {request.state.value}{by}")
        if not late_ok and self.bastion.clock.now() >= request.expires_at:
            raise AlreadyExists(f"request {request_id} has timed out; the agent must ask again")
        if actor == request.agent:
            raise InvalidInput(f"{actor} asked for {request_id} and can't decide it")
        return request


def _may_request(values: list[str]) -> tuple[str, ...]:
    names = [n.strip() for value in values for n in value.split(",")]
    if not names or any(not n for n in names):
        raise InvalidInput("give --may-request TARGET[,TARGET…] (or '*' for any target)")
    for name in names:
        if name != "*":
            policy.check_target_name(name)
    return tuple(dict.fromkeys(names))


def _new_request_id() -> str:
    return "r-" + secrets.token_hex(4)


def _decision(
    request: AccessRequest, state: RequestState, reason: str, grant_id: str | None
) -> dict[str, object]:
    return {
        "request": request.id,
        "state": state.value,
        "agent": request.agent,
        "task": request.task,
        "targets": list(request.targets),
        "ttl_seconds": int(request.ttl.total_seconds()),
        "node": request.node,
        "reason": reason,
        "grant": grant_id,
    }
