"""The project's webhook receiver as a process of its own, so the fault suite can kill it and start it again.

``python receiver.py --port P --log FILE --secret S`` runs :class:`toolkit.validation.webhook_receiver.
WebhookReceiver` on that port, appends one JSON line per request to FILE (the headers, the body, whether
the signature verified) and answers 200. Run again on the same port after a kill, it appends to the same
file: the log spans every life of the receiver.
"""

from __future__ import annotations

import argparse
import json
import threading

from toolkit.validation.webhook_receiver import ReceivedRequest, WebhookReceiver


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--secret", required=True)
    args = parser.parse_args()

    def append(request: ReceivedRequest) -> None:
        # Called before the answer (under the receiver's lock): a request it acknowledged is in the log.
        record = {
            "headers": request.headers,
            "body": request.body.decode("utf-8", "replace"),
            "signature_valid": request.signature_valid,
        }
        with open(args.log, "a") as log:
            log.write(json.dumps(record) + "\n")

    receiver = WebhookReceiver(args.secret, port=args.port, on_request=append)
    receiver.start()
    print("ready", flush=True)
    threading.Event().wait()  # until the process is killed


if __name__ == "__main__":
    main()
