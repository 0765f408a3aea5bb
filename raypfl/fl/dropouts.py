"""Clients that come and go (design principle 11), the server's side: only online clients are dispatched; a
client that goes offline before its upload ends loses its job (never trained where that is known at dispatch),
its bytes and seconds count as wasted, and its slot is filled again. Synchronous rounds sample among the online
clients, with a deadline (`algorithm.round_deadline_s`) and over-selection (`algorithm.over_selection`) so that a
vanished client does not stall a round. FedGMR's reference clients, when offline, no longer hold the aggregation
window (`raypfl.fl.triggers.ReferenceWindow`) and rejoin when they are back online.

A mixin of `raypfl.fl.server.Server`, whose state and queue it works on; with `clients.availability: always`
none of it runs and histories are those of a population that is always online.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

from raypfl.fl.state import IDLE, TRAINING, UPLOADING, EvalRecord
from raypfl.sim.clock import MB

if TYPE_CHECKING:
    from raypfl.fl.server import Server

_BROADCAST, _FLUSH = 1, 2  # the server's event ranks (see raypfl.fl.server)


class Dropouts:
    def _online_now(self: Server, client: int) -> bool:
        return self.presence.online(client, self.state.now)

    def _first_clients(self: Server) -> list[int]:
        if self.presence.always:
            return self.participation.initial()
        if self.alg.trigger == "synchronous":
            self._start_round(0)
            return []
        clients = self.participation.initial(self._online_now)
        self._missing(range(self.participation.num_clients) if self.participation.everyone else
                      range(self.participation.concurrency), clients)
        return clients

    def _start_round(self: Server, round_: int) -> None:
        """Synchronous methods: sample the round's clients (over-selecting with `over_selection`) among those
        online, with a deadline when `round_deadline_s` is set; nobody online: try again later."""
        st = self.state
        count = math.ceil(self.participation.concurrency * (1 + self.alg.over_selection))
        online = None if self.presence.always else self._online_now
        if online is None:
            clients = self.participation.round_sample(round_, count)
        else:
            clients = self.participation.draw(round_, count, busy=(), online=online, salt=st.retries or None)
        self._dispatch(st.now, clients)
        if self.alg.round_deadline_s is not None and clients:
            self.queue.push(st.now + self.alg.round_deadline_s, "deadline", _FLUSH, round=st.round)
        if not clients:
            self._retry_later()

    def _missing(self: Server, slots: Iterable[int], chosen: list[int]) -> None:
        """After a draw among online clients: the offline ones of `slots` (released clients, or the first clients)
        are brought back when online (everyone taking part, reference clients), else their slots are vacant."""
        st = self.state
        chosen_set = set(chosen)
        missing = [c for c in slots if c not in chosen_set] if self.participation.everyone else []
        absent_now = [c for c in self.participation.always if c not in st.busy and c not in st.absent]
        for client in dict.fromkeys([*missing, *absent_now]):
            if client in chosen_set:
                continue
            if client in self.participation.always:
                st.absent.add(client)  # brought back once, when online again
            back = self.presence.back_at(client, st.now)
            if back < math.inf:
                self.queue.push(back, "online", _BROADCAST, client=client)
        if not self.participation.everyone:
            st.vacancies = max(0, self.participation.concurrency - len(st.busy))
            if st.vacancies:
                self._retry_later()

    def _retry_later(self: Server) -> None:
        st = self.state
        if not st.retry_pending:
            st.retry_pending = True
            self.queue.push(st.now + self.presence.retry_s, "retry", _BROADCAST)

    def _presence_event(self: Server, kind: str, client: int, round_: int, time_: float) -> EvalRecord | None:
        st, cl = self.state, self.state.clients
        if kind == "drop":
            if cl.status[client] in (TRAINING, UPLOADING) and cl.offline_at[client] == time_:
                self._drop(client)
                self._after_drop(client)
        elif kind == "online":
            if cl.status[client] == IDLE and self._online_now(client):
                self._dispatch(st.now, [client])
        elif kind == "retry":
            st.retry_pending = False
            st.retries += 1
            if self.alg.trigger == "synchronous":
                if not st.busy:
                    self._start_round(st.round)
            else:
                self._dispatch(st.now, self.participation.draw(st.round, st.vacancies, st.busy, self._online_now,
                                                               salt=st.retries))
                self._missing((), [])
        elif st.round == round_ and not st.flush_pending:  # a synchronous round's deadline, not yet aggregated
            if st.buffer:
                st.flush_pending = True
                self.queue.push(st.now, "flush", _FLUSH)
            else:  # nobody arrived in time: a new round
                for straggler in sorted(st.in_flight):
                    self._drop(straggler)
                st.retries += 1
                self._start_round(st.round)
        return None

    def _drop(self: Server, client: int) -> None:
        st, cl = self.state, self.state.clients
        uploaded = 0.0
        if cl.status[client] == UPLOADING:
            uploaded = float(cl.upload_mb[client]) - self.uplink.remaining_mb(client)
            self.uplink.finish(client)
        cl.status[client] = IDLE
        st.busy.discard(client)
        st.in_flight.discard(client)
        if not cl.doomed[client]:
            self.trainer.cancel(client)
        cl.dropped[client] += 1
        st.dropped += 1
        st.wasted_s += st.now - float(cl.dispatched_at[client])
        st.wasted_bytes += int(round((self.sizes.megabytes(float(cl.job_density[client])) + uploaded) * MB))
        cl.offline_at[client] = math.inf

    def _after_drop(self: Server, client: int) -> None:
        """Fill the dropped client's slot, and aggregate what arrived if that was all the buffer waited for."""
        st = self.state
        if self.alg.trigger == "synchronous":
            if not st.in_flight and not st.buffer and not st.flush_pending:
                st.retries += 1
                self._start_round(st.round)
        else:
            chosen = self.participation.refill(st.round, [client], st.busy, self._online_now, salt=st.retries)
            st.retries += 1
            self._dispatch(st.now, chosen)
            self._missing([client], chosen)
        if st.buffer and not st.flush_pending:
            when = self.trigger.flush_time(st.now, -1, st.buffer, st.in_flight, st.last_flush, st.absent)
            if when is not None:
                st.flush_pending = True
                self.queue.push(when, "flush", _FLUSH)
