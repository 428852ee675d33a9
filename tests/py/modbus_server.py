"""A Modbus server for fieldgate's tests, built on pymodbus: an implementation independent of
the gateway's, over TCP or a serial line (RTU).

Usage: modbus_server.py (--tcp PORT | --rtu-over-tcp PORT | --serial PATH --baud N) SPEC.json

SPEC.json: {"units": {"1": [point, ...], ...}, "silent": [unit, ...]}
A point is {"table": "holding_register"|"input_register"|"coil"|"discrete_input",
"address": 0-based, "type": "u16"|"i16"|"u32"|"i32"|"u64"|"i64"|"f32"|"f64"|"bool"|"string",
"order": "ABCD"|"BADC"|"CDAB"|"DCBA", "raw": value before scaling, "registers": N for strings}.
Values are encoded here with Python's struct module, independently of the gateway's codec.
Addresses outside a unit's points (before the first or after the last of a table) answer
ILLEGAL DATA ADDRESS; units in "silent", and
units not in the spec, never answer (as on a real RS-485 line).

Prints "ready" once serving, then one line per request received:
"req <unit> <function> <address> <count>" and, for writes, "write <unit> <function> <address>
<values...>", flushed at once so the test can follow along.
"""

import asyncio
import json
import logging
import struct
import sys

from pymodbus.datastore import ModbusDeviceContext, ModbusServerContext, ModbusSparseDataBlock
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus import FramerType

FORMATS = {"u16": ">H", "i16": ">h", "u32": ">I", "i32": ">i", "f32": ">f",
           "u64": ">Q", "i64": ">q", "f64": ">d"}


def words(point):
    """The registers of a point: big-endian bytes, then placed by the byte/word order."""
    kind, order = point["type"], point.get("order", "ABCD")
    if kind == "string":
        text = str(point["raw"]).encode("ascii")
        data = text.ljust(2 * point["registers"], b"\0")
        pairs = [data[i:i + 2] for i in range(0, len(data), 2)]
        if order in ("BADC", "DCBA"):
            pairs = [p[::-1] for p in pairs]
        return [int.from_bytes(p, "big") for p in pairs]
    raw = point["raw"]
    if kind[0] in "ui":
        raw = int(raw)
    data = struct.pack(FORMATS[kind], raw)
    if order == "DCBA":
        data = data[::-1]
    elif order == "CDAB":
        data = b"".join(data[i:i + 2] for i in reversed(range(0, len(data), 2)))
    elif order == "BADC":
        data = b"".join(data[i:i + 2][::-1] for i in range(0, len(data), 2))
    return [int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2)]


def unit_context(points):
    tables = {"coil": {}, "discrete_input": {}, "input_register": {}, "holding_register": {}}
    for p in points:
        table = tables[p["table"]]
        if p["table"] in ("coil", "discrete_input"):
            table[p["address"]] = bool(p["raw"])
        else:
            for i, w in enumerate(words(p)):
                table[p["address"] + i] = w
    # Like a device's memory map: contiguous from the first to the last address used (holes
    # read as 0); beyond it, ILLEGAL DATA ADDRESS.
    def block(t):
        if not t:
            return ModbusSparseDataBlock({65535: 0})
        return ModbusSparseDataBlock({a: t.get(a, 0) for a in range(min(t), max(t) + 1)})
    return ModbusDeviceContext(co=block(tables["coil"]), di=block(tables["discrete_input"]),
                               ir=block(tables["input_register"]), hr=block(tables["holding_register"]))


SILENT = set()


def quiet(sending, packet):
    """Units that are silent (or absent) send nothing: drop their answers on the way out."""
    if sending and packet:
        unit = packet[6] if TCP else packet[0]
        if unit in SILENT:
            return b""
    return packet


def trace(sending, pdu):
    if not sending:
        unit, fc = pdu.dev_id, pdu.function_code
        if fc in (5, 6, 15, 16):
            values = getattr(pdu, "registers", None) or getattr(pdu, "bits", None) or []
            print(f"write {unit} {fc} {pdu.address} " + " ".join(str(int(v)) for v in values), flush=True)
        else:
            print(f"req {unit} {fc} {pdu.address} {getattr(pdu, 'count', 0)}", flush=True)
    return pdu


TCP = True


async def main():
    logging.disable(logging.CRITICAL)  # pymodbus logs a traceback for every silent unit
    args = sys.argv[1:]
    spec = json.load(open(args[-1]))
    global TCP
    TCP = args[0] == "--tcp"  # MBAP framing; RTU frames otherwise (serial, or over TCP)
    devices = {int(u): unit_context(points) for u, points in spec["units"].items()}
    SILENT.update(int(u) for u in spec.get("silent", []))
    SILENT.update(u for u in range(256) if u not in devices)
    context = ModbusServerContext(devices=devices, single=False)
    if args[0] in ("--tcp", "--rtu-over-tcp"):
        framer = FramerType.SOCKET if TCP else FramerType.RTU
        server = ModbusTcpServer(context, framer=framer, address=("127.0.0.1", int(args[1])),
                                 trace_pdu=trace, trace_packet=quiet)
    else:
        server = ModbusSerialServer(context, framer=FramerType.RTU, port=args[1], baudrate=int(args[3]),
                                    trace_pdu=trace, trace_packet=quiet)
    await server.serve_forever(background=True)
    print("ready", flush=True)
    await server.serving


asyncio.run(main())
