"""Sends messages with the official RocketMQ 5 Python client and prints one JSON line per
receipt. Driven by tests/python_interop.rs; arguments: access point, topic, count."""
import json
import sys

from rocketmq import ClientConfiguration, Credentials, Message, Producer

access_point, topic, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
producer = Producer(ClientConfiguration(access_point, Credentials()), (topic,))
producer.startup()
try:
    for i in range(count):
        msg = Message()
        msg.topic = topic
        msg.body = f"python message {i}".encode()
        msg.tag = "TagA" if i % 2 == 0 else "TagB"
        msg.keys = f"key-{i}"
        msg.add_property("index", str(i))
        if i % 3 == 0:
            msg.message_group = f"group-{i % 4}"
        receipt = producer.send(msg)
        print(json.dumps({"i": i, "message_id": receipt.message_id, "offset": receipt.offset}), flush=True)
finally:
    producer.shutdown()
