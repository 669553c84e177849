//! The event loop of one generator thread.
//!
//! One `mio` poll set holds every connection of the thread plus a timerfd
//! ([`TimerFd`]) that wakes the loop at the next scheduled moment. Each turn
//! of the loop: `tick` (send what is due, open connections, time out, end
//! the run), arm the timer for the next deadline, wait, then handle each
//! readiness event — finish a connect, continue a write, read and feed the
//! response through [`ResponseParser`] and, for event streams,
//! [`SseSplitter`] — and record each finished exchange in the [`Recorder`].
//!
//! The three loads differ only in when a request starts and what happens
//! when one ends:
//! - closed: `concurrency` connections, each sends again as soon as its
//!   response ends; latency runs from the send;
//! - open: request `k` is due at `start + k / rate` whether or not an
//!   earlier one finished; due requests queue for a free connection (at
//!   most `max_connections`), and latency runs from the due time, so a
//!   server that falls behind shows its queueing delay instead of hiding
//!   it (no coordinated omission);
//! - idle: open `streams` streamed requests, count those whose head arrives,
//!   hold them all open for `hold`, then close them.

use std::collections::VecDeque;
use std::io;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token};

use super::conn::{Conn, ReadEnd};
use super::stats::{ns, Hist, Recorder};
use super::timer::TimerFd;
use super::wire::{Classifier, Head, Progress as Parsed, ResponseParser, Seen, Sink, SseSplitter};
use super::{Load, Plan, Progress, RequestSpec, Target};

const TIMER: Token = Token(usize::MAX);
/// How often timeouts and the idle phase are looked at.
const HOUSEKEEPING: Duration = Duration::from_millis(100);
/// Wait before replacing a connection whose connect failed.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(10);
/// Read buffer shared by every connection of the thread.
const SCRATCH: usize = 64 * 1024;
/// The idle phase waits this many request timeouts, at most, for every
/// stream to open; then whatever is not open counts as failed.
const IDLE_OPEN_TIMEOUTS: u32 = 2;

/// This thread's part of the plan.
pub(crate) struct Share {
    pub load: Load,
    /// Requests this thread may start (closed and open loop).
    pub budget: Option<u64>,
    /// Open loop: this thread's first request is due this long after start.
    pub offset: Duration,
}

/// One request in flight on a connection.
struct Exchange {
    /// Due time (open loop) or issue time; latency runs from here.
    start: Instant,
    /// When the request was handed to the socket.
    sent: Option<Instant>,
    /// Started inside the measured window.
    measured: bool,
    status: u16,
    event_stream: bool,
    keep_alive: bool,
    first_byte: Option<Instant>,
    first_token: Option<Instant>,
    first_event: Option<Instant>,
    last_event: Option<Instant>,
    events: u64,
    bytes: u64,
    seen: Seen,
    /// Idle phase: the head arrived and the stream is being held.
    opened: bool,
}

impl Exchange {
    fn new(start: Instant, measured: bool) -> Self {
        Self {
            start,
            sent: None,
            measured,
            status: 0,
            event_stream: false,
            keep_alive: false,
            first_byte: None,
            first_token: None,
            first_event: None,
            last_event: None,
            events: 0,
            bytes: 0,
            seen: Seen::default(),
            opened: false,
        }
    }
}

/// Feeds one exchange from the parsers.
struct ExSink<'a> {
    ex: &'a mut Exchange,
    sse: &'a mut SseSplitter,
    cls: &'a Classifier,
    gap: &'a mut Hist,
    now: Instant,
}

impl Sink for ExSink<'_> {
    fn on_head(&mut self, head: &Head) {
        self.ex.status = head.status;
        self.ex.event_stream = head.event_stream;
        self.ex.keep_alive = head.keep_alive;
    }

    fn on_body(&mut self, data: &[u8]) {
        let ex = &mut *self.ex;
        ex.bytes += data.len() as u64;
        if !ex.event_stream {
            return;
        }
        let (cls, gap, now) = (self.cls, &mut *self.gap, self.now);
        self.sse.feed(data, &mut |name: &[u8], data: &[u8]| {
            let seen = cls.classify(name, data, !ex.seen.token);
            ex.seen.done |= seen.done;
            ex.seen.usage |= seen.usage;
            ex.seen.error |= seen.error;
            if seen.token && !ex.seen.token {
                ex.seen.token = true;
                ex.first_token = Some(now);
            }
            match ex.last_event {
                Some(last) if ex.measured => {
                    gap.saturating_record(ns(now.saturating_duration_since(last)));
                }
                Some(_) => {}
                None => ex.first_event = Some(now),
            }
            ex.last_event = Some(now);
            ex.events += 1;
        });
    }
}

struct Slot {
    conn: Conn,
    parser: ResponseParser,
    sse: SseSplitter,
    ex: Option<Exchange>,
}

enum Mode {
    Closed {
        issued: u64,
        /// Replacement connections due at these times.
        reopen: VecDeque<Instant>,
    },
    Open {
        rate: f64,
        offset: Duration,
        /// Requests scheduled so far; the next is due at
        /// `start + offset + scheduled / rate`.
        scheduled: u64,
        /// Due requests waiting for a connection, by due time.
        pending: VecDeque<Instant>,
        /// Connections with nothing in flight, most recently used last.
        idle: Vec<usize>,
        max_connections: usize,
    },
    Idle {
        streams: u64,
        parallel: usize,
        launched: u64,
        opening: usize,
        hold: Duration,
        hold_until: Option<Instant>,
    },
}

pub(crate) struct Engine<'a> {
    poll: Poll,
    timer: TimerFd,
    armed: Option<Instant>,
    slots: Vec<Option<Slot>>,
    free: Vec<usize>,
    /// Open connections.
    live: usize,
    /// Connections with an exchange.
    busy: usize,
    target: &'a Target,
    spec: &'a RequestSpec,
    request: &'a [u8],
    plan: &'a Plan,
    progress: &'a Progress,
    cls: Classifier,
    scratch: Vec<u8>,
    rec: Recorder,
    start: Instant,
    measure_from: Instant,
    end: Instant,
    drain_until: Instant,
    budget: Option<u64>,
    housekeeping: Instant,
    mode: Mode,
    done: bool,
}

impl<'a> Engine<'a> {
    pub(crate) fn new(
        target: &'a Target,
        spec: &'a RequestSpec,
        request: &'a [u8],
        plan: &'a Plan,
        share: Share,
        start: Instant,
        progress: &'a Progress,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        let timer = TimerFd::new(poll.registry(), TIMER)?;
        let measure_from = start + plan.warmup;
        let end = measure_from + plan.duration;
        let mode = match share.load {
            Load::Closed { .. } => Mode::Closed {
                issued: 0,
                reopen: VecDeque::new(),
            },
            Load::Open {
                rate,
                max_connections,
            } => Mode::Open {
                rate,
                offset: share.offset,
                scheduled: 0,
                pending: VecDeque::new(),
                idle: Vec::new(),
                max_connections: max_connections.max(1),
            },
            Load::Idle {
                streams,
                hold,
                parallel,
            } => Mode::Idle {
                streams: streams as u64,
                parallel: parallel.max(1),
                launched: 0,
                opening: 0,
                hold,
                hold_until: None,
            },
        };
        let mut rec = Recorder::default();
        if let Mode::Idle { streams, .. } = mode {
            rec.idle.requested = streams;
        }
        let mut engine = Engine {
            poll,
            timer,
            armed: None,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            busy: 0,
            target,
            spec,
            request,
            plan,
            progress,
            cls: Classifier::default(),
            scratch: vec![0; SCRATCH],
            rec,
            start,
            measure_from,
            end,
            drain_until: end + plan.drain_timeout,
            budget: share.budget,
            housekeeping: start + HOUSEKEEPING,
            mode,
            done: false,
        };
        if let Load::Closed { concurrency } = share.load {
            for _ in 0..concurrency {
                if !engine.may_issue(start) {
                    break;
                }
                engine.count_issue();
                engine.open(start, start);
            }
        }
        Ok(engine)
    }

    /// Runs until the plan is done; returns what was recorded.
    pub(crate) fn run(mut self) -> io::Result<Recorder> {
        let mut events = Events::with_capacity(1024);
        loop {
            let now = Instant::now();
            self.tick(now);
            if self.done {
                break;
            }
            let next = self.next_deadline(now);
            if self.armed.is_none_or(|a| a > next) {
                self.timer.arm(next.saturating_duration_since(now))?;
                self.armed = Some(next);
            }
            match self.poll.poll(&mut events, None) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for ev in events.iter() {
                if ev.token() == TIMER {
                    self.timer.drain();
                    self.armed = None;
                    continue;
                }
                let closed = ev.is_read_closed() || ev.is_error();
                let readable = ev.is_readable() || closed;
                let writable = ev.is_writable() || ev.is_error();
                self.on_ready(ev.token().0, readable, writable, closed);
            }
        }
        for i in 0..self.slots.len() {
            self.close(i);
        }
        Ok(self.rec)
    }

    fn measured(&self, start: Instant) -> bool {
        start >= self.measure_from && start < self.end
    }

    fn may_issue(&self, now: Instant) -> bool {
        let Mode::Closed { issued, .. } = &self.mode else {
            return false;
        };
        now < self.end && self.budget.is_none_or(|b| *issued < b)
    }

    fn count_issue(&mut self) {
        if let Mode::Closed { issued, .. } = &mut self.mode {
            *issued += 1;
        }
    }

    fn next_deadline(&self, now: Instant) -> Instant {
        let mut next = self.housekeeping;
        let mut consider = |t: Instant| {
            if t < next {
                next = t;
            }
        };
        match &self.mode {
            Mode::Closed { reopen, .. } => {
                if now < self.end {
                    consider(self.end);
                } else {
                    consider(self.drain_until);
                }
                if let Some(t) = reopen.front() {
                    consider(*t);
                }
            }
            Mode::Open {
                rate,
                offset,
                scheduled,
                ..
            } => {
                let due = self.start + *offset + Duration::from_secs_f64(*scheduled as f64 / rate);
                if due < self.end && self.budget.is_none_or(|b| *scheduled < b) {
                    consider(due);
                } else {
                    consider(self.drain_until);
                }
            }
            Mode::Idle { hold_until, .. } => {
                if let Some(t) = hold_until {
                    consider(*t);
                }
            }
        }
        next.max(now)
    }

    /// Everything that is due at `now`.
    fn tick(&mut self, now: Instant) {
        if now >= self.housekeeping {
            self.housekeeping = now + HOUSEKEEPING;
            self.expire(now);
        }
        match &mut self.mode {
            Mode::Closed { reopen, .. } => {
                let mut due = 0;
                while reopen.front().is_some_and(|t| *t <= now) {
                    reopen.pop_front();
                    due += 1;
                }
                for _ in 0..due {
                    if self.may_issue(now) {
                        self.count_issue();
                        self.open(now, now);
                    }
                }
                if now >= self.drain_until {
                    self.abandon(now);
                }
                if !self.may_issue(now) && self.busy == 0 {
                    self.done = true;
                }
            }
            Mode::Open {
                rate,
                offset,
                scheduled,
                pending,
                ..
            } => {
                let mut more = true;
                loop {
                    if self.budget.is_some_and(|b| *scheduled >= b) {
                        more = false;
                        break;
                    }
                    let due =
                        self.start + *offset + Duration::from_secs_f64(*scheduled as f64 / *rate);
                    if due >= self.end {
                        more = false;
                        break;
                    }
                    if due > now {
                        break;
                    }
                    pending.push_back(due);
                    *scheduled += 1;
                }
                self.dispatch(now);
                if !more && now >= self.drain_until {
                    self.abandon(now);
                }
                if let Mode::Open { pending, .. } = &self.mode {
                    if !more && pending.is_empty() && self.busy == 0 {
                        self.done = true;
                    }
                }
            }
            Mode::Idle {
                streams,
                parallel,
                launched,
                opening,
                hold,
                hold_until,
            } => {
                if let Some(t) = hold_until {
                    if now >= *t {
                        self.done = true;
                    }
                    return;
                }
                let settled = self.rec.idle.opened + self.rec.idle.failed;
                let late = now >= self.start + self.plan.timeout * IDLE_OPEN_TIMEOUTS;
                if settled >= *streams || late {
                    *hold_until = Some(now + *hold);
                    self.rec.idle.open_ms = (now - self.start).as_millis() as u64;
                    self.progress
                        .holding
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if late {
                        // Never launched, or launched and still not open:
                        // failed either way, and not held.
                        let never = *streams - *launched;
                        *launched = *streams;
                        self.rec.idle.failed += never;
                        for _ in 0..never {
                            self.rec.fail("not_open_in_time");
                        }
                        let opening: Vec<usize> = (0..self.slots.len())
                            .filter(|i| {
                                self.slots[*i]
                                    .as_ref()
                                    .and_then(|s| s.ex.as_ref())
                                    .is_some_and(|ex| !ex.opened)
                            })
                            .collect();
                        for i in opening {
                            self.lose(i, now, "not_open_in_time");
                        }
                    }
                    return;
                }
                let mut to_launch = 0;
                while *launched < *streams && *opening < *parallel {
                    *launched += 1;
                    *opening += 1;
                    to_launch += 1;
                }
                for _ in 0..to_launch {
                    self.open(now, now);
                }
            }
        }
    }

    /// Open loop: hands due requests to idle connections, opening new ones
    /// up to the limit; the rest keep waiting in `pending`.
    fn dispatch(&mut self, now: Instant) {
        loop {
            let Mode::Open {
                pending,
                idle,
                max_connections,
                ..
            } = &mut self.mode
            else {
                return;
            };
            let Some(&due) = pending.front() else { return };
            if let Some(i) = idle.pop() {
                pending.pop_front();
                self.issue(i, due, now);
            } else if self.live < *max_connections {
                pending.pop_front();
                self.open(due, now);
            } else {
                return;
            }
        }
    }

    /// Opens a connection that carries a request due at `start`.
    fn open(&mut self, start: Instant, now: Instant) {
        let i = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        let measured = self.measured(start) || matches!(self.mode, Mode::Idle { .. });
        self.rec.counts.connections += 1;
        match Conn::connect(
            self.target.addr,
            self.target.tls.as_ref(),
            self.poll.registry(),
            Token(i),
        ) {
            Ok(conn) => {
                self.slots[i] = Some(Slot {
                    conn,
                    parser: ResponseParser::default(),
                    sse: SseSplitter::default(),
                    ex: Some(Exchange::new(start, measured)),
                });
                self.live += 1;
                self.busy += 1;
            }
            Err(_) => {
                // No socket (out of descriptors or ports): the request
                // failed. The closed loop retries after a pause; the open
                // loop's dispatch goes on with the next due request.
                self.free.push(i);
                let ex = Exchange::new(start, measured);
                self.record(&ex, now, Some("connect"));
                if let Mode::Closed { reopen, .. } = &mut self.mode {
                    reopen.push_back(now + RECONNECT_BACKOFF);
                }
            }
        }
    }

    /// Starts a request due at `start` on idle connection `i`.
    fn issue(&mut self, i: usize, start: Instant, now: Instant) {
        let measured = self.measured(start);
        let Some(slot) = self.slots[i].as_mut() else {
            return;
        };
        slot.ex = Some(Exchange::new(start, measured));
        self.busy += 1;
        if slot.conn.connected() {
            self.send(i, now);
        }
    }

    fn send(&mut self, i: usize, now: Instant) {
        let Some(slot) = self.slots[i].as_mut() else {
            return;
        };
        let Some(ex) = slot.ex.as_mut() else { return };
        ex.sent = Some(now);
        if ex.measured {
            self.rec.counts.sent += 1;
        }
        if slot.conn.send(self.request).is_err() {
            self.lose(i, now, "write");
        }
    }

    fn on_ready(&mut self, i: usize, readable: bool, writable: bool, closed: bool) {
        let now = Instant::now();
        let Some(slot) = self.slots.get_mut(i).and_then(Option::as_mut) else {
            return;
        };
        if !slot.conn.connected() {
            match slot.conn.finish_connect() {
                Ok(true) => {
                    if slot.ex.is_some() {
                        self.send(i, now);
                    }
                }
                Ok(false) => return,
                Err(_) => {
                    self.lose(i, now, "connect");
                    return;
                }
            }
        }
        let Some(slot) = self.slots[i].as_mut() else {
            return;
        };
        if writable && slot.conn.write_pending() && slot.conn.flush(self.request).is_err() {
            self.lose(i, now, "write");
            return;
        }
        if readable {
            self.read(i, now, closed);
        }
    }

    fn read(&mut self, i: usize, now: Instant, closed: bool) {
        let Some(slot) = self.slots[i].as_mut() else {
            return;
        };
        let Slot {
            conn,
            parser,
            sse,
            ex,
        } = slot;
        let cls = &self.cls;
        let gap = &mut self.rec.gap;
        let mut parsed: Option<Result<(), &'static str>> = None;
        let mut unsolicited = false;
        let res = conn.read(&mut self.scratch, closed, |data| {
            let Some(ex) = ex.as_mut() else {
                unsolicited = true;
                return ControlFlow::Break(());
            };
            if ex.first_byte.is_none() {
                ex.first_byte = Some(now);
            }
            let mut sink = ExSink {
                ex,
                sse,
                cls,
                gap,
                now,
            };
            match parser.feed(data, &mut sink) {
                Ok(Parsed::NeedMore) => ControlFlow::Continue(()),
                Ok(Parsed::Done) => {
                    parsed = Some(Ok(()));
                    ControlFlow::Break(())
                }
                Err(e) => {
                    parsed = Some(Err(e.kind()));
                    ControlFlow::Break(())
                }
            }
        });
        // Idle phase: a stream is open once its successful head is in.
        if let Some(ex) = slot.ex.as_mut() {
            if !ex.opened
                && matches!(self.mode, Mode::Idle { .. })
                && (200..300).contains(&ex.status)
            {
                ex.opened = true;
                if let Some(fb) = ex.first_byte {
                    self.rec.ttfb.saturating_record(ns(fb - ex.start));
                }
                self.rec.idle.opened += 1;
                self.progress
                    .opened
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if let Mode::Idle { opening, .. } = &mut self.mode {
                    *opening = opening.saturating_sub(1);
                }
            }
        }
        match (res, parsed) {
            (_, Some(Ok(()))) => self.complete(i, now, None, false),
            (_, Some(Err(kind))) => self.complete(i, now, Some(kind), true),
            (Err(_), None) => self.lose(i, now, "io"),
            (Ok(ReadEnd::Eof), None) => {
                let has_ex = self.slots[i].as_ref().is_some_and(|s| s.ex.is_some());
                if !has_ex {
                    // The server closed a keep-alive connection between
                    // requests.
                    self.lose(i, now, "closed");
                    return;
                }
                let finished = self.slots[i].as_mut().map(|s| s.parser.finish());
                match finished {
                    Some(Ok(_)) => self.complete(i, now, None, true),
                    Some(Err(e)) => self.complete(i, now, Some(e.kind()), true),
                    None => {}
                }
            }
            (Ok(_), None) if unsolicited => self.lose(i, now, "unsolicited_response"),
            (Ok(_), None) => {}
        }
    }

    /// Exchange on `i` ended with a response (or broke mid-response:
    /// `error`); `close` when the connection cannot be reused.
    fn complete(&mut self, i: usize, now: Instant, error: Option<&'static str>, close: bool) {
        let Some(slot) = self.slots[i].as_mut() else {
            return;
        };
        let Some(ex) = slot.ex.take() else { return };
        self.busy -= 1;
        slot.parser.reset();
        slot.sse.reset();
        let keep = !close && error.is_none() && ex.keep_alive;
        let was_open = ex.opened;
        if let Mode::Idle { opening, .. } = &mut self.mode {
            // A held stream that ends was dropped by the server; one that
            // ends before opening failed to open.
            if was_open {
                self.rec.idle.dropped += 1;
            } else {
                self.rec.idle.failed += 1;
                *opening = opening.saturating_sub(1);
                let reason = match error {
                    Some(e) => e.to_owned(),
                    None if ex.status != 0 => format!("status_{}", ex.status),
                    None => "ended_before_open".to_owned(),
                };
                self.rec.fail(&reason);
            }
            self.close(i);
            return;
        }
        self.record(&ex, now, error);
        if !keep {
            self.close(i);
        }
        match &mut self.mode {
            Mode::Closed { .. } => {
                if self.may_issue(now) {
                    self.count_issue();
                    if keep {
                        self.issue(i, now, now);
                    } else {
                        self.open(now, now);
                    }
                }
            }
            Mode::Open { idle, .. } => {
                if keep {
                    idle.push(i);
                }
                self.dispatch(now);
            }
            Mode::Idle { .. } => {}
        }
    }

    /// Connection `i` broke (connect failed, IO error, timeout, closed
    /// while idle): its exchange, if any, failed with `reason`.
    fn lose(&mut self, i: usize, now: Instant, reason: &'static str) {
        let ex = self.slots[i].as_mut().and_then(|s| s.ex.take());
        let had_ex = ex.is_some();
        if let Some(ex) = ex {
            self.busy -= 1;
            if let Mode::Idle { opening, .. } = &mut self.mode {
                if ex.opened {
                    self.rec.idle.dropped += 1;
                } else {
                    self.rec.idle.failed += 1;
                    *opening = opening.saturating_sub(1);
                    self.rec.fail(reason);
                }
            } else {
                self.record(&ex, now, Some(reason));
            }
        }
        self.close(i);
        self.after_loss(had_ex, reason == "connect", now);
    }

    /// Replaces lost capacity: closed loop reopens (after a pause when the
    /// connect itself failed), open loop dispatches what is waiting.
    fn after_loss(&mut self, had_ex: bool, connect_failed: bool, now: Instant) {
        match &mut self.mode {
            Mode::Closed { reopen, .. } => {
                if had_ex || connect_failed {
                    let at = if connect_failed {
                        now + RECONNECT_BACKOFF
                    } else {
                        now
                    };
                    reopen.push_back(at);
                }
            }
            Mode::Open { .. } => self.dispatch(now),
            Mode::Idle { .. } => {}
        }
    }

    fn close(&mut self, i: usize) {
        let Some(mut slot) = self.slots.get_mut(i).and_then(Option::take) else {
            return;
        };
        if slot.ex.is_some() {
            self.busy -= 1;
        }
        slot.conn.deregister(self.poll.registry());
        self.live -= 1;
        self.free.push(i);
        if let Mode::Open { idle, .. } = &mut self.mode {
            if let Some(at) = idle.iter().position(|j| *j == i) {
                idle.swap_remove(at);
            }
        }
    }

    /// Fails requests that ran past the per-request timeout.
    fn expire(&mut self, now: Instant) {
        let timeout = self.plan.timeout;
        let late: Vec<usize> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let ex = s.as_ref()?.ex.as_ref()?;
                let since = ex.sent.unwrap_or(ex.start);
                (!ex.opened && now.saturating_duration_since(since) > timeout).then_some(i)
            })
            .collect();
        for i in late {
            self.lose(i, now, "timeout");
        }
    }

    /// The drain deadline passed: whatever is still queued or in flight
    /// failed, with its latency so far recorded as a lower bound so the
    /// tail still shows it.
    fn abandon(&mut self, now: Instant) {
        if let Mode::Open { pending, .. } = &mut self.mode {
            let waiting: Vec<Instant> = pending.drain(..).collect();
            for due in waiting {
                let ex = Exchange::new(due, self.measured(due));
                self.record(&ex, now, Some("unsent"));
            }
        }
        let busy: Vec<usize> = (0..self.slots.len())
            .filter(|i| self.slots[*i].as_ref().is_some_and(|s| s.ex.is_some()))
            .collect();
        for i in busy {
            let ex = self.slots[i].as_mut().and_then(|s| s.ex.take());
            if let Some(ex) = ex {
                self.busy -= 1;
                self.record(&ex, now, Some("timeout"));
            }
            self.close(i);
        }
        if let Mode::Closed { reopen, .. } = &mut self.mode {
            reopen.clear();
        }
        self.end = self.end.min(now);
    }

    /// Counts one finished exchange.
    fn record(&mut self, ex: &Exchange, now: Instant, error: Option<&str>) {
        use std::sync::atomic::Ordering::Relaxed;
        let rec = &mut self.rec;
        // Only answered requests count as work the target did; requests
        // failed before any response byte (connect errors, queued past the
        // drain deadline, timeouts) do not.
        if ex.status != 0 {
            rec.counts.all_completed += 1;
            if now >= self.measure_from && now < self.end {
                rec.counts.completed_in_window += 1;
            }
        }
        self.progress.completed.fetch_add(1, Relaxed);
        self.progress.events.fetch_add(ex.events, Relaxed);
        if !ex.measured {
            return;
        }
        let c = &mut rec.counts;
        c.completed += 1;
        c.events += ex.events;
        c.body_bytes += ex.bytes;
        rec.latency.saturating_record(ns(now - ex.start));
        rec.service
            .saturating_record(ns(now - ex.sent.unwrap_or(ex.start)));
        let mut reason: Option<String> = error.map(str::to_owned);
        let success = (200..300).contains(&ex.status);
        if ex.status != 0 && !success && reason.is_none() {
            reason = Some(format!("status_{}", ex.status));
        }
        if self.spec.stream {
            if let Some(fb) = ex.first_byte {
                rec.ttfb.saturating_record(ns(fb - ex.start));
            }
            if let Some(ft) = ex.first_token {
                rec.ttft.saturating_record(ns(ft - ex.start));
            }
            if let (Some(first), Some(last)) = (ex.first_event, ex.last_event) {
                let span = (last - first).as_secs_f64();
                if ex.events >= 2 && span > 0.0 {
                    rec.stream_rate
                        .saturating_record(((ex.events - 1) as f64 / span) as u64);
                }
            }
            if success {
                let ch = &mut rec.checks;
                ch.streams += 1;
                let failures = [
                    (
                        !ex.event_stream,
                        &mut ch.not_event_stream,
                        "not_event_stream",
                    ),
                    (ex.seen.error, &mut ch.error_event, "error_event"),
                    (!ex.seen.done, &mut ch.missing_done, "missing_done"),
                    (
                        self.spec.require_usage && !ex.seen.usage,
                        &mut ch.missing_usage,
                        "missing_usage",
                    ),
                    (!ex.seen.token, &mut ch.no_token, "no_token"),
                ];
                let mut all_ok = true;
                for (failed, counter, name) in failures {
                    if failed {
                        *counter += 1;
                        all_ok = false;
                        if reason.is_none() {
                            reason = Some(name.to_owned());
                        }
                    }
                }
                if all_ok && error.is_none() {
                    ch.ok += 1;
                }
            }
        }
        match reason {
            None => rec.counts.ok += 1,
            Some(r) => {
                rec.fail(&r);
                self.progress.failed.fetch_add(1, Relaxed);
            }
        }
    }
}
