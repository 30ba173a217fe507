"""Prints the Python requirements of the Home Assistant integrations that the test's instance
sets up, one a line, so the install step can put them in the venv before the test starts
(the test runs Home Assistant with --skip-pip: nothing is installed while it runs, and a
missing package is an import error in its log, not a slow download).

Run with the venv's Python, after `pip install homeassistant==...`. The integrations are the
ones Home Assistant's bootstrap always sets up, the ones the test's configuration.yaml names,
MQTT's entity platforms (the MQTT integration sets up every one of them) and, transitively,
their dependencies and after-dependencies, which Home Assistant's requirement check walks
too (homeassistant/requirements.py).
"""

import json
import pathlib

import homeassistant.components
from homeassistant import bootstrap

COMPONENTS = pathlib.Path(homeassistant.components.__file__).parent
# What configuration.yaml (tests/system/homeassistant.rs) and the MQTT config entry set up.
CONFIGURED = {"http", "api", "mqtt"}
# A manifest key that makes Home Assistant check a discovery integration's requirements too.
DISCOVERY = {"dhcp": ("dhcp",), "mqtt": ("mqtt",), "ssdp": ("ssdp",), "zeroconf": ("zeroconf", "homekit")}
# Imported by a platform without being in its manifest: the camera integration (one of MQTT's
# platforms) imports the stream integration's core, which imports numpy. Pinned as Home
# Assistant's own stream manifest pins it.
IMPORTED = {"stream": "numpy"}


def manifest(domain):
    return json.loads((COMPONENTS / domain / "manifest.json").read_text())


def mqtt_platforms():
    # Read from the source rather than imported: importing the MQTT integration needs paho.
    text = (COMPONENTS / "mqtt" / "const.py").read_text()
    block = text.split("\nPLATFORMS = [", 1)[1].split("]", 1)[0]
    return {line.strip().rstrip(",").split(".")[1].lower() for line in block.splitlines() if "Platform." in line}


def main():
    todo = set(bootstrap.CORE_INTEGRATIONS) | {"logger", "system_log"}
    todo |= set(bootstrap.DEFAULT_INTEGRATIONS) | CONFIGURED | mqtt_platforms()
    seen, requirements = set(), set()
    while todo:
        domain = todo.pop()
        if domain in seen or not (COMPONENTS / domain / "manifest.json").is_file():
            continue
        seen.add(domain)
        m = manifest(domain)
        requirements |= set(m.get("requirements", []))
        todo |= set(m.get("dependencies", [])) | set(m.get("after_dependencies", []))
        todo |= {d for d, keys in DISCOVERY.items() if any(k in m for k in keys)}
    for domain, package in IMPORTED.items():
        requirements |= {r for r in manifest(domain)["requirements"] if r.split("==")[0] == package}
    for requirement in sorted(requirements, key=str.lower):
        print(requirement)


if __name__ == "__main__":
    main()
