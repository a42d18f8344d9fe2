"""Consumer-side interop scenarios for the official RocketMQ 5 Python client
(rocketmq-python-client 5.1.2, used unmodified). Driven by tests/python_consume.rs.

    python_scenarios.py SCENARIO ACCESS_POINT ARGS...

    simple     AP TOPIC GROUP N   SimpleConsumer: content, delivery_attempt, ack, TAG filter
    sql        AP TOPIC GROUP     SQL92 filter on user properties
    fifo       AP TOPIC GROUP     orderly GROUP: per-message-group order
    delay      AP TOPIC GROUP     DELAY messages arrive at (not before) their delivery time
    transaction AP TOPIC GROUP    commit, rollback and an orphan resolved by the server's check
    invisible  AP TOPIC GROUP     change_invisible_duration, redelivery, stale receipt handles
    dlq        AP TOPIC GROUP     GROUP has max_delivery_attempts 2: the message ends in %DLQ%GROUP
    push       AP TOPIC GROUP OUTFILE   PushConsumer appending bodies to OUTFILE until OUTFILE.stop
    failover   AP TOPIC GROUP N   prints PRODUCED, waits for GO on stdin (the test kills the
                                  leader in between), then receives every message at least once

Each scenario checks what it receives and exits 1 with a message on stderr at the first
mismatch. On success the last line of stdout is one JSON object with what it measured, which
the Rust test checks again. Progress goes to stderr; the client's own log goes to
~/logs/rocketmq_python/rocketmq_client.log.
"""
import contextlib
import copy
import json
import math
import os
import select
import sys
import threading
import time
import traceback

from rocketmq import (ClientConfiguration, ConsumeResult, Credentials,
                      FilterExpression, Message, MessageListener, Producer,
                      PushConsumer, SimpleConsumer, TransactionChecker,
                      TransactionResolution)
from rocketmq.grpc_protocol import Code, FilterType
from rocketmq.v5.exception import ClientException

# Upper bound on receive() calls in any one loop; each loop also has a wall-clock deadline.
MAX_RECEIVE_CALLS = 2000
BATCH = 16
INVISIBLE_S = 30
# Long-polling time of the consumers (seconds). A receive() polls ONE queue, picked at random
# (SimpleConsumer builds a fresh QueueSelector with a random start index per call and drops it:
# simple_consumer.py __select_topic_queue), so an empty queue costs this much; short keeps
# multi-queue loops quick. The Rust test gives topics as few queues as makes sense.
AWAIT_S = 2
# A quiet check makes at least this many receive() calls, so that with the (at most 2) queues
# of the topics it watches, every queue is very likely polled (a missed queue only weakens the
# check, it cannot fail it).
QUIET_MIN_CALLS = 6
QUIET_AWAIT_S = 1


class ScenarioFailed(Exception):
    pass


def fail(what):
    raise ScenarioFailed(what)


def check(condition, what):
    if not condition:
        fail(what)


def log(line):
    print(f"[{time.strftime('%H:%M:%S')}] {line}", file=sys.stderr, flush=True)


def describe(msg):
    return (
        f"id={msg.message_id} body={msg.body!r} tag={msg.tag} keys={sorted(msg.keys)} "
        f"props={msg.properties} group={msg.message_group} attempt={msg.delivery_attempt}"
    )


def config(access_point):
    return ClientConfiguration(access_point, Credentials())


@contextlib.contextmanager
def running(client, what):
    """Starts `client` and always shuts it down; a failing shutdown is logged rather than
    raised so that it cannot mask the scenario's own outcome."""
    client.startup()
    try:
        yield client
    finally:
        try:
            client.shutdown()
        except Exception as e:
            log(f"{what}: shutdown failed: {e!r}")


def simple_consumer(access_point, group, topic, expression=None, await_s=AWAIT_S):
    return SimpleConsumer(
        config(access_point),
        group,
        {topic: expression if expression is not None else FilterExpression("*")},
        await_duration=await_s,
    )


def new_message(topic, body, tag=None, keys=None, properties=None, message_group=None,
                delivery_timestamp=None):
    msg = Message()
    msg.topic = topic
    msg.body = body.encode()
    if tag is not None:
        msg.tag = tag
    if keys is not None:
        msg.keys = keys
    for k, v in (properties or {}).items():
        msg.add_property(k, v)
    if message_group is not None:
        msg.message_group = message_group
    if delivery_timestamp is not None:
        msg.delivery_timestamp = delivery_timestamp  # epoch seconds (whole)
    return msg


class ErrorCount:
    """Counts (and logs) the errors a retrying loop swallowed."""

    def __init__(self, what):
        self.what = what
        self.count = 0

    def __call__(self, error):
        self.count += 1
        log(f"{self.what} failed, retrying: {error!r}")


def receive_batches(consumer, seconds, invisible=INVISIBLE_S, on_error=None):
    """Yields (messages, wall-clock time receive() returned) for every non-empty receive until
    `seconds` have passed (the caller breaks out earlier when done). With on_error, a failing
    receive() is handed to it and retried after 0.5 s instead of raised."""
    deadline = time.monotonic() + seconds
    calls = 0
    while calls < MAX_RECEIVE_CALLS and time.monotonic() < deadline:
        calls += 1
        try:
            messages = consumer.receive(BATCH, invisible)
        except Exception as e:
            if on_error is None:
                raise
            on_error(e)
            time.sleep(0.5)
            continue
        received_at = time.time()
        if messages:
            yield messages, received_at


def drain(consumer, want, seconds, on_message, invisible=INVISIBLE_S):
    """Receives until `want` messages were handled or `seconds` pass. Each message goes to
    on_message(msg, received_at), which checks it (raising on a mismatch), and is then acked
    before the next receive() (an orderly queue only moves on after the ack). Returns the
    number handled."""
    handled = 0
    for messages, received_at in receive_batches(consumer, seconds, invisible):
        for msg in messages:
            on_message(msg, received_at)
            consumer.ack(msg)
            handled += 1
        if handled >= want:
            break
    return handled


def receive_one(consumer, seconds, invisible, what):
    """The next message (not acked); fails if none arrives within `seconds` or if more than
    one comes at once (every scenario using this has exactly one message in flight)."""
    for messages, _ in receive_batches(consumer, seconds, invisible):
        check(len(messages) == 1, f"{what}: expected one message, got {[describe(m) for m in messages]}")
        return messages[0]
    fail(f"{what}: nothing received within {seconds} s")


def expect_quiet(consumer, seconds, what, invisible=INVISIBLE_S):
    """Fails if any message arrives within `seconds` and QUIET_MIN_CALLS receive() calls.
    Returns the number of receive() calls made."""
    saved = consumer.await_duration
    # A public setter (simple_consumer.py): later receive() calls long-poll this long.
    consumer.await_duration = QUIET_AWAIT_S
    try:
        deadline = time.monotonic() + seconds
        calls = 0
        while calls < MAX_RECEIVE_CALLS and (time.monotonic() < deadline or calls < QUIET_MIN_CALLS):
            calls += 1
            messages = consumer.receive(BATCH, invisible)
            if messages:
                fail(f"{what}: unexpected {[describe(m) for m in messages]}")
        return calls
    finally:
        consumer.await_duration = saved


def index_of(msg):
    raw = msg.properties.get("index")
    check(raw is not None and raw.isdigit(), f"message without a numeric 'index' property: {describe(msg)}")
    return int(raw)


def expect_invalid_receipt_handle(consumer, msg, what):
    """An ack with a stale handle must be refused with INVALID_RECEIPT_HANDLE (which the
    client raises as BadRequestException)."""
    try:
        consumer.ack(msg)
    except ClientException as e:
        check(e.code == Code.INVALID_RECEIPT_HANDLE,
              f"{what}: expected INVALID_RECEIPT_HANDLE ({Code.INVALID_RECEIPT_HANDLE}), got {e!r}")
        return
    fail(f"{what}: the ack with a stale receipt handle succeeded")


# --- scenarios --------------------------------------------------------------------------


def simple_tag(i):
    return "TagA" if i % 2 == 0 else "TagB"


def scenario_simple(access_point, topic, group, n):
    n = int(n)
    sent = {}  # index -> message_id
    with running(Producer(config(access_point), (topic,)), "producer") as producer:
        for i in range(n):
            msg = new_message(topic, f"simple {i}", tag=simple_tag(i), keys=f"key-{i}",
                              properties={"index": str(i)})
            sent[i] = producer.send(msg).message_id
    log(f"sent {n} messages")

    def checker(seen, only_tag_a):
        def on_message(msg, _received_at):
            i = index_of(msg)
            check(i in sent, f"unknown index {i}: {describe(msg)}")
            check(i not in seen, f"message {i} delivered twice: {describe(msg)}")
            seen.add(i)
            check(msg.message_id == sent[i], f"message {i}: id {msg.message_id}, sent as {sent[i]}")
            check(msg.topic == topic, f"message {i}: topic {msg.topic!r}")
            check(msg.body == f"simple {i}".encode(), f"message {i}: body {msg.body!r}")
            check(msg.tag == simple_tag(i), f"message {i}: tag {msg.tag!r}")
            check(not only_tag_a or msg.tag == "TagA", f"TagA filter let through {describe(msg)}")
            check(msg.keys == {f"key-{i}"}, f"message {i}: keys {msg.keys}")
            check(msg.properties == {"index": str(i)}, f"message {i}: properties {msg.properties}")
            check(msg.message_group is None, f"message {i}: message_group {msg.message_group!r}")
            check(msg.delivery_attempt == 1, f"message {i}: delivery_attempt {msg.delivery_attempt}")
            check(not msg.corrupted, f"message {i}: body digest mismatch")
        return on_message

    seen = set()
    with running(simple_consumer(access_point, group, topic, await_s=5), "consumer") as consumer:
        received = drain(consumer, n, 60, checker(seen, False))
        check(received == n, f"received {received} of {n}; missing {sorted(set(sent) - seen)}")
        quiet_calls = expect_quiet(consumer, 3, "after every message was acked")

    tag_a = {i for i in sent if simple_tag(i) == "TagA"}
    seen_a = set()
    with running(simple_consumer(access_point, group + "-tags", topic, FilterExpression("TagA")),
                 "tag consumer") as consumer:
        received_a = drain(consumer, len(tag_a), 60, checker(seen_a, True))
        check(seen_a == tag_a, f"TagA consumer got {sorted(seen_a)}, expected {sorted(tag_a)}")
        expect_quiet(consumer, 3, "TagA consumer after all TagA messages")

    return {"sent": n, "received": received, "tag_a_expected": len(tag_a),
            "tag_a_received": received_a, "quiet_receive_calls": quiet_calls}


def scenario_sql(access_point, topic, group):
    sent = {}
    with running(Producer(config(access_point), (topic,)), "producer") as producer:
        for i in range(10):
            color = "red" if i % 2 == 0 else "blue"
            msg = new_message(topic, f"sql {i}", properties={"index": str(i), "n": str(i), "color": color})
            sent[i] = producer.send(msg).message_id
    expected = {i for i in sent if i > 4 and i % 2 == 0}
    log(f"sent 10 messages; the filter should pass {sorted(expected)}")

    seen = set()

    def on_message(msg, _received_at):
        i = index_of(msg)
        check(i in expected, f"the SQL92 filter let through {describe(msg)}")
        check(i not in seen, f"message {i} delivered twice")
        seen.add(i)
        check(msg.message_id == sent[i], f"message {i}: id {msg.message_id}, sent as {sent[i]}")
        check(msg.body == f"sql {i}".encode(), f"message {i}: body {msg.body!r}")
        check(msg.properties.get("n") == str(i) and msg.properties.get("color") == "red",
              f"message {i}: properties {msg.properties}")

    # FilterType.SQL is the SQL92 type (the proto enum has no member named SQL92).
    expression = FilterExpression("n > 4 AND color = 'red'", FilterType.SQL)
    with running(simple_consumer(access_point, group, topic, expression), "consumer") as consumer:
        drain(consumer, len(expected), 60, on_message)
        check(seen == expected, f"received {sorted(seen)}, expected {sorted(expected)}")
        expect_quiet(consumer, 3, "SQL92 consumer after the matching messages")
    return {"received_n": sorted(seen)}


def scenario_fifo(access_point, topic, group):
    groups, per_group = 4, 10
    with running(Producer(config(access_point), (topic,)), "producer") as producer:
        # Interleaved: the groups' messages alternate on the wire (and on shared queues).
        for j in range(per_group):
            for k in range(groups):
                producer.send(new_message(topic, f"{k}-{j}", message_group=f"g{k}"))
    log(f"sent {groups} x {per_group} FIFO messages")

    order = {f"g{k}": [] for k in range(groups)}

    def on_message(msg, _received_at):
        k, _, j = msg.body.decode().partition("-")
        check(msg.message_group == f"g{k}", f"message group {msg.message_group!r} for {describe(msg)}")
        check(msg.delivery_attempt == 1, f"unexpected redelivery: {describe(msg)}")
        order[msg.message_group].append(int(j))
        expected = list(range(len(order[msg.message_group])))
        check(order[msg.message_group] == expected,
              f"group {msg.message_group} out of order: {order[msg.message_group]}")

    with running(simple_consumer(access_point, group, topic), "consumer") as consumer:
        # First hold one batch unacked: while it is in flight the broker must hand out no
        # later message of its message groups (other groups may come, and are acked).
        held = next((batch for batch, _ in receive_batches(consumer, 30)), None)
        check(held is not None, "nothing received within 30 s")
        for msg in held:
            on_message(msg, None)
        held_groups = {msg.message_group for msg in held}
        received_while_held = 0
        for _ in range(QUIET_MIN_CALLS):
            for msg in consumer.receive(BATCH, INVISIBLE_S):
                check(msg.message_group not in held_groups,
                      f"{describe(msg)} delivered while an earlier message of its group was in flight")
                on_message(msg, None)
                consumer.ack(msg)
                received_while_held += 1
        for msg in held:
            consumer.ack(msg)
        total = len(held) + received_while_held
        total += drain(consumer, groups * per_group - total, 90, on_message)
        for g, seq in order.items():
            check(seq == list(range(per_group)), f"group {g} got {seq}")
        check(total == groups * per_group, f"received {total}")
    return {"received": total, "per_group": {g: len(s) for g, s in order.items()},
            "held_groups": sorted(held_groups), "received_while_held": received_while_held}


def scenario_delay(access_point, topic, group):
    count = 5
    # Whole seconds: the client sends delivery_timestamp as Timestamp.seconds only.
    deliver_at = math.ceil(time.time()) + 3
    sent = {}
    with running(Producer(config(access_point), (topic,)), "producer") as producer:
        for i in range(count):
            msg = new_message(topic, f"delay {i}", properties={"index": str(i)}, delivery_timestamp=deliver_at)
            sent[i] = producer.send(msg).message_id
    log(f"sent {count} DELAY messages due at {deliver_at} (now {time.time():.3f})")

    lateness_ms = {}
    echoed = []

    def on_message(msg, received_at):
        i = index_of(msg)
        check(i in sent and i not in lateness_ms, f"unexpected or duplicate {describe(msg)}")
        check(msg.message_id == sent[i], f"message {i}: id {msg.message_id}, sent as {sent[i]}")
        check(msg.body == f"delay {i}".encode(), f"message {i}: body {msg.body!r}")
        late = (received_at - deliver_at) * 1000
        # Broker and client share this machine's clock; 50 ms covers rounding.
        check(late >= -50, f"message {i} arrived {-late:.0f} ms before its delivery time")
        lateness_ms[i] = late
        # The client converts it to ms, and reports 0 when the broker did not set it
        # (message.py tests the Timestamp sub-message for truth, which is always true).
        if msg.delivery_timestamp:
            check(msg.delivery_timestamp == deliver_at * 1000,
                  f"message {i}: delivery_timestamp {msg.delivery_timestamp}, sent {deliver_at * 1000}")
            echoed.append(i)

    with running(simple_consumer(access_point, group, topic, await_s=5), "consumer") as consumer:
        drain(consumer, count, 30, on_message)
    check(len(lateness_ms) == count, f"received {sorted(lateness_ms)} of {count}")
    return {"received": len(lateness_ms),
            "min_lateness_ms": round(min(lateness_ms.values())),
            "max_lateness_ms": round(max(lateness_ms.values())),
            "delivery_timestamp_echoed": len(echoed)}


class RecordingChecker(TransactionChecker):
    """Answers the server's check like an application would from its local state: the orphan
    and the committed transaction are committed, anything else rolled back. (Answering COMMIT
    for commit-me too means a check racing our own commit cannot roll it back.)"""

    def __init__(self):
        self.lock = threading.Lock()
        self.calls = {}

    def check(self, message):
        body = message.body.decode(errors="replace")
        with self.lock:
            self.calls[body] = self.calls.get(body, 0) + 1
        log(f"transaction check for {body!r}")
        if body.startswith("orphan") or body == "commit-me":
            return TransactionResolution.COMMIT
        return TransactionResolution.ROLLBACK


def scenario_transaction(access_point, topic, group):
    checker = RecordingChecker()
    arrived = {}  # body -> time.monotonic() of arrival
    # Kept referenced until the end: nothing may ever resolve the orphan but the server's check
    # (Transaction has no destructor or context manager that would; see producer.py).
    open_transactions = []
    # The producer stays up while consuming: its telemetry stream receives the server's check.
    with running(Producer(config(access_point), (topic,), checker=checker), "producer") as producer:
        ids = {}
        for body in ("commit-me", "rollback-me", "orphan-me"):
            txn = producer.begin_transaction()
            ids[body] = producer.send(new_message(topic, body), txn).message_id
            if body == "commit-me":
                txn.commit()
            elif body == "rollback-me":
                txn.rollback()
            else:
                open_transactions.append(txn)
        sent_at = time.monotonic()
        log(f"sent the transactional messages {ids}")

        with running(simple_consumer(access_point, group, topic), "consumer") as consumer:
            wanted = {"commit-me", "orphan-me"}
            deadline = time.monotonic() + 60
            calls = 0
            quiet_until = None  # receive 5 s more once both arrived: rollback-me must not come
            while calls < MAX_RECEIVE_CALLS:
                now = time.monotonic()
                if quiet_until is None and now > deadline:
                    fail(f"within 60 s only {sorted(arrived)} arrived; checks: {checker.calls}")
                if quiet_until is not None and now > quiet_until:
                    break
                calls += 1
                for msg in consumer.receive(BATCH, INVISIBLE_S):
                    body = msg.body.decode(errors="replace")
                    check(body != "rollback-me", f"the rolled-back message was delivered: {describe(msg)}")
                    check(body in wanted, f"unexpected {describe(msg)}")
                    check(body not in arrived, f"{body} delivered twice")
                    check(msg.message_id == ids[body], f"{body}: id {msg.message_id}, sent as {ids[body]}")
                    arrived[body] = time.monotonic()
                    consumer.ack(msg)
                    log(f"received {body}")
                if quiet_until is None and set(arrived) == wanted:
                    quiet_until = time.monotonic() + 5
        checks = dict(checker.calls)
    return {"received": sorted(arrived),
            "orphan_checked": checks.get("orphan-me", 0) > 0,
            "checks": checks,
            "orphan_arrived_after_ms": round((arrived["orphan-me"] - sent_at) * 1000),
            "open_transactions": len(open_transactions)}


def scenario_invisible(access_point, topic, group):
    with running(Producer(config(access_point), (topic,)), "producer") as producer:
        sent_id = producer.send(new_message(topic, "invisible 0", properties={"index": "0"})).message_id

    with running(simple_consumer(access_point, group, topic), "consumer") as consumer:
        first = receive_one(consumer, 30, INVISIBLE_S, "first delivery")
        check(first.message_id == sent_id and first.body == b"invisible 0", f"first delivery: {describe(first)}")
        check(first.delivery_attempt == 1, f"first delivery: attempt {first.delivery_attempt}")
        # change_invisible_duration replaces first.receipt_handle with the server's answer
        # (consumer.py, __handle_change_invisible_result); the copy keeps the original handle.
        stale = copy.copy(first)
        changed_at = time.monotonic()
        consumer.change_invisible_duration(first, 2)
        check(bool(first.receipt_handle), "ChangeInvisibleDuration answered an empty receipt handle")
        handle_changed = first.receipt_handle != stale.receipt_handle

        # The client picks a queue at random per receive and long-polls it for AWAIT_S; with
        # the topic spread over two broker groups (the nameserver test), half its receives
        # wait on the group without the message, so 10 s missed it about one run in twenty.
        again = receive_one(consumer, 30, INVISIBLE_S, "redelivery after change_invisible_duration(2 s)")
        redelivered_after_ms = (time.monotonic() - changed_at) * 1000
        check(again.message_id == sent_id and again.body == b"invisible 0", f"redelivery: {describe(again)}")
        check(again.delivery_attempt == 2, f"redelivery: attempt {again.delivery_attempt}")
        # 100 ms slack for timer granularity; much earlier means the change was not applied.
        check(redelivered_after_ms >= 1900, f"redelivered {redelivered_after_ms:.0f} ms after the 2 s change")

        expect_invalid_receipt_handle(consumer, stale, "ack with the first handle while redelivered")
        consumer.ack(again)
        expect_invalid_receipt_handle(consumer, stale, "ack with the first handle after the ack")
    return {"first_attempt": first.delivery_attempt, "second_attempt": again.delivery_attempt,
            "redelivered_after_ms": round(redelivered_after_ms), "handle_changed": handle_changed,
            "stale_ack_rejected": True}


def scenario_dlq(access_point, topic, group):
    props = {"index": "0", "kind": "dlq"}
    with running(Producer(config(access_point), (topic,)), "producer") as producer:
        sent_id = producer.send(new_message(topic, "dlq 0", tag="TagA", keys="key-dlq", properties=props)).message_id

    attempts = []
    with running(simple_consumer(access_point, group, topic), "consumer") as consumer:
        for attempt, seconds in ((1, 30), (2, 15)):
            msg = receive_one(consumer, seconds, 1, f"delivery {attempt}")
            check(msg.message_id == sent_id and msg.body == b"dlq 0", f"delivery {attempt}: {describe(msg)}")
            check(msg.delivery_attempt == attempt, f"delivery {attempt}: attempt {msg.delivery_attempt}")
            attempts.append(msg.delivery_attempt)
        # Keep polling past the second invisibility (1 s): the next pop is where the broker
        # gives up on the message and moves it to the dead-letter topic.
        expect_quiet(consumer, 5, "after max_delivery_attempts (2) the message came back", invisible=1)

    dlq_topic = f"%DLQ%{group}"
    with running(simple_consumer(access_point, group + "-dlq-reader", dlq_topic), "dlq reader") as reader:
        # The dead-letter topic may not be routable yet (the broker creates it on first use),
        # so receive errors are retried until the deadline.
        dead = None
        errors = ErrorCount("dead-letter receive")
        for messages, _ in receive_batches(reader, 60, INVISIBLE_S, on_error=errors):
            check(len(messages) == 1, f"dead-letter topic holds more: {[describe(m) for m in messages]}")
            dead = messages[0]
            break
        check(dead is not None, f"nothing arrived on {dlq_topic} within 60 s")
        check(dead.message_id == sent_id, f"dead letter id {dead.message_id}, sent as {sent_id}")
        check(dead.topic == dlq_topic, f"dead letter topic {dead.topic!r}")
        check(dead.body == b"dlq 0", f"dead letter body {dead.body!r}")
        check(dead.properties == props, f"dead letter properties {dead.properties}")
        check(dead.tag == "TagA" and dead.keys == {"key-dlq"}, f"dead letter tag/keys: {describe(dead)}")
        reader.ack(dead)
    return {"attempts": attempts, "dlq_topic": dlq_topic, "dlq_message_id": dead.message_id,
            "sent_message_id": sent_id, "dlq_delivery_attempt": dead.delivery_attempt,
            "dlq_receive_errors": errors.count}


class AppendingListener(MessageListener):
    """Appends each body as one line to a file (flushed per line, so the test can watch it)."""

    def __init__(self, path):
        self.lock = threading.Lock()
        self.file = open(path, "a", encoding="utf-8")
        self.count = 0

    def consume(self, message):
        line = message.body.decode()
        with self.lock:
            if self.file.closed:  # a late callback after shutdown: let it be redelivered
                return ConsumeResult.FAILURE
            self.file.write(line + "\n")
            self.file.flush()
            self.count += 1
        return ConsumeResult.SUCCESS


def scenario_push(access_point, topic, group, outfile):
    stop_file = outfile + ".stop"
    listener = AppendingListener(outfile)
    try:
        consumer = PushConsumer(config(access_point), group, listener, {topic: FilterExpression("*")})
        with running(consumer, "push consumer"):
            log(f"push consumer started; waiting for {stop_file}")
            deadline = time.monotonic() + 300
            polls = 0
            while not os.path.exists(stop_file):
                polls += 1
                check(time.monotonic() < deadline and polls < 3000, f"{stop_file} did not appear within 300 s")
                time.sleep(0.1)
    finally:
        with listener.lock:
            listener.file.close()
    return {"consumed": listener.count}


def scenario_failover(access_point, topic, group, n):
    n = int(n)
    sent = {}  # message_id -> index
    with running(Producer(config(access_point), (topic,)), "producer") as producer:
        for i in range(n):
            msg = new_message(topic, f"failover {i}", properties={"index": str(i)})
            sent[producer.send(msg).message_id] = i

    # Started before the leader dies, so the client holds a route to the old leader and must
    # recover from that (its route refresh runs 10 s after startup, then every 30 s).
    with running(simple_consumer(access_point, group, topic), "consumer") as consumer:
        print("PRODUCED", flush=True)
        ready, _, _ = select.select([sys.stdin], [], [], 120)
        check(bool(ready), "no GO on stdin within 120 s")
        line = sys.stdin.readline().strip()
        check(line == "GO", f"expected GO on stdin, got {line!r}")
        go_at = time.monotonic()

        counts = {}  # message_id -> deliveries
        receive_errors = ErrorCount("receive")
        ack_errors = ErrorCount("ack")
        # Invisible 10 s: a message whose ack was lost with the leader comes back soon.
        for messages, _ in receive_batches(consumer, 120, 10, on_error=receive_errors):
            for msg in messages:
                check(msg.message_id in sent, f"unknown message {describe(msg)}")
                i = sent[msg.message_id]
                check(msg.body == f"failover {i}".encode(), f"message {i}: body {msg.body!r}")
                counts[msg.message_id] = counts.get(msg.message_id, 0) + 1
                try:
                    consumer.ack(msg)
                except Exception as e:
                    # Unacked, it comes back after its invisibility: a duplicate, allowed.
                    ack_errors(e)
            if len(counts) == n:
                break
        missing = sorted(sent[m] for m in set(sent) - set(counts))
        check(not missing, f"never received (within 120 s of GO): {missing}")
    return {"expected": n, "received_unique": len(counts),
            "duplicates": sum(counts.values()) - len(counts),
            "receive_errors": receive_errors.count, "ack_errors": ack_errors.count,
            "all_received_after_ms": round((time.monotonic() - go_at) * 1000)}


def scenario_broadcast(access_point, topic, group, n):
    """GROUP is a broadcasting group: two consumers of it each get every message once."""
    n = int(n)
    with running(Producer(config(access_point), (topic,)), "producer") as producer:
        sent = {producer.send(new_message(topic, f"broadcast {i}")).message_id for i in range(n)}
    received = []
    # Two clients of one group in one process: distinct client ids, as two processes would have.
    with running(simple_consumer(access_point, group, topic), "consumer 1") as first, \
            running(simple_consumer(access_point, group, topic), "consumer 2") as second:
        for name, consumer in (("consumer 1", first), ("consumer 2", second)):
            seen = set()

            def on_message(msg, _received_at, seen=seen, name=name):
                check(msg.message_id in sent, f"{name}: unknown message {describe(msg)}")
                check(msg.message_id not in seen, f"{name}: {describe(msg)} delivered twice")
                seen.add(msg.message_id)

            got = drain(consumer, n, 60, on_message)
            check(seen == sent, f"{name} got {got} of {n} messages")
            received.append(len(seen))
        for name, consumer in (("consumer 1", first), ("consumer 2", second)):
            expect_quiet(consumer, 2, f"{name} after every message was acked")
    return {"sent": n, "received_per_consumer": received}


SCENARIOS = {
    "broadcast": (scenario_broadcast, "TOPIC GROUP N"),
    "simple": (scenario_simple, "TOPIC GROUP N"),
    "sql": (scenario_sql, "TOPIC GROUP"),
    "fifo": (scenario_fifo, "TOPIC GROUP"),
    "delay": (scenario_delay, "TOPIC GROUP"),
    "transaction": (scenario_transaction, "TOPIC GROUP"),
    "invisible": (scenario_invisible, "TOPIC GROUP"),
    "dlq": (scenario_dlq, "TOPIC GROUP"),
    "push": (scenario_push, "TOPIC GROUP OUTFILE"),
    "failover": (scenario_failover, "TOPIC GROUP N"),
}


def main(argv):
    name = argv[1] if len(argv) > 1 else None
    if name not in SCENARIOS or len(argv) != 3 + len(SCENARIOS[name][1].split()):
        usage = "\n".join(f"  {s} ACCESS_POINT {p}" for s, (_, p) in SCENARIOS.items())
        print(f"usage: {argv[0]} SCENARIO ACCESS_POINT ARGS...\n{usage}", file=sys.stderr)
        return 2
    run, _ = SCENARIOS[name]
    log(f"scenario {name} {argv[2:]}")
    try:
        summary = run(*argv[2:])
    except ScenarioFailed as e:
        log(f"FAILED {name}: {e}")
        return 1
    except Exception:
        log(f"FAILED {name} with an exception:\n{traceback.format_exc()}")
        return 1
    summary["scenario"] = name
    print(json.dumps(summary, sort_keys=True), flush=True)
    log(f"passed {name}: {summary}")
    return 0


if __name__ == "__main__":
    code = main(sys.argv)
    sys.stdout.flush()
    sys.stderr.flush()
    # The client's thread pools and gRPC event loop can keep the interpreter from exiting
    # after a failure mid-RPC; everything that matters has been flushed.
    os._exit(code)
