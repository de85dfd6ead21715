"""A vim WSDL for oslo.vmware (and Cinder), generated at test time, never committed.

oslo.vmware talks SOAP through suds, which needs the vim WSDL
(``vimService.wsdl`` importing ``vim.wsdl``). VMware's is not ours to ship,
and oslo.vmware ships only the data-type schemas (``oslo_vmware/wsdl/<ver>/``:
``vim-types.xsd``, ``core-types.xsd``, ``query-types.xsd``,
``reflect-types.xsd``). The rest is derived here from pyVmomi's method tables:
for every ``urn:vim25`` method of the target API version, a request type
(``_this`` and the parameters, their types and multiplicities), the request
and response elements, the messages, the port type and a document/literal
binding; and the ``VimService`` service. A parameter whose type the shipped
schema lacks is left out when optional; a method that needs one is left out
(vSAN's, and types newer than the schema).

The result lives in the cache directory (``~/.cache/vmdk-snap/wsdl-<hash>``),
keyed by this file, pyVmomi's version and the schemas, like the simulator's
binary; the shipped schemas are linked, not copied. Run as a script it
prints the ``file://`` URL of ``vimService.wsdl``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from pyVmomi import VmomiSupport
from pyVmomi.Version import IsChildVersion

__all__ = ["TARGET", "vim_wsdl"]

TARGET = "vim.version.v8_0_0_0"  # the API of the newest schema oslo.vmware ships
SCHEMA_VERSION = "8.0"
SCHEMAS = ("core-types.xsd", "query-types.xsd", "reflect-types.xsd", "vim-types.xsd")
_PRIMITIVES = {
    "string": "xsd:string",
    "boolean": "xsd:boolean",
    "byte": "xsd:byte",
    "short": "xsd:short",
    "int": "xsd:int",
    "long": "xsd:long",
    "float": "xsd:float",
    "double": "xsd:double",
    "anyType": "xsd:anyType",
    "vmodl.DateTime": "xsd:dateTime",
    "vmodl.Binary": "xsd:base64Binary",
    "vmodl.URI": "xsd:anyURI",
    "vmodl.TypeName": "xsd:string",
    "vmodl.MethodName": "xsd:string",
    "vmodl.PropertyPath": "xsd:string",
    "vmodl.ManagedObject": "vim25:ManagedObjectReference",
    "vmodl.DataObject": "vim25:DynamicData",
}
_XSD = 'xmlns:xsd="http://www.w3.org/2001/XMLSchema"'
_SCHEMA = (
    f'<schema targetNamespace="urn:vim25" xmlns="http://www.w3.org/2001/XMLSchema" '
    f'xmlns:vim25="urn:vim25" {_XSD} elementFormDefault="qualified">'
)
_WSDL_NS = (
    'xmlns="http://schemas.xmlsoap.org/wsdl/" xmlns:soap="http://schemas.xmlsoap.org/wsdl/soap/"'
)
_HEADER = '<?xml version="1.0" encoding="UTF-8" ?>\n'


def schema_dir() -> Path:
    """oslo.vmware's data-type schemas for :data:`SCHEMA_VERSION`."""
    import oslo_vmware  # noqa: PLC0415 - only where the Cinder tier runs

    return Path(oslo_vmware.__file__).parent / "wsdl" / SCHEMA_VERSION


class _Unknown(KeyError):
    """A vmodl type the shipped schema does not define."""


class _Generator:
    def __init__(self, schemas: Path, target: str) -> None:
        self.target = target
        self.known: set[str] = set()
        for name in SCHEMAS:
            text = (schemas / name).read_text(encoding="utf-8")
            self.known.update(re.findall(r'<(?:complex|simple)Type name="([^"]+)"', text))
        self.skipped: dict[str, str] = {}

    def xsd_type(self, vmodl: str) -> tuple[str, bool]:
        """A vmodl type name as (its schema type, whether it is an array)."""
        array = vmodl.endswith("[]")
        base = vmodl.removesuffix("[]")
        if base in _PRIMITIVES:
            return _PRIMITIVES[base], array
        if base in VmomiSupport._managedDefMap:
            return "vim25:ManagedObjectReference", array
        info = VmomiSupport._dataDefMap.get(base) or VmomiSupport._enumDefMap.get(base)
        if info and info[1] in self.known:
            return f"vim25:{info[1]}", array
        raise _Unknown(base)

    def element(self, name: str, vmodl: str, optional: bool) -> str:
        kind, array = self.xsd_type(vmodl)
        occurs = (' minOccurs="0"' if optional else "") + (
            ' maxOccurs="unbounded"' if array else ""
        )
        return f'<element name="{name}" type="{kind}"{occurs} />'

    def methods(self) -> Iterator[tuple[str, list[Any], tuple[Any, ...]]]:
        seen: set[str] = set()
        found = []
        for info in VmomiSupport._managedDefMap.values():
            for _name, wsdl, version, params, result, _priv, _faults in info[5] or ():
                if VmomiSupport.GetWsdlNamespace(version) != "urn:vim25":
                    continue
                if not IsChildVersion(self.target, version) or wsdl in seen:
                    continue
                seen.add(wsdl)
                found.append((wsdl, list(params), tuple(result)))
        yield from sorted(found)

    def write(self, out: Path) -> int:
        types, elements, messages, operations, bindings = [], [], [], [], []
        request_types: set[str] = set()
        action = quoteattr("urn:" + VmomiSupport.GetVersionNamespace(self.target))
        for wsdl, params, (result_flags, result_type, _) in self.methods():
            try:
                kept = [p for p in params if IsChildVersion(self.target, p[2]) and self._fits(p)]
                returnval = (
                    ""
                    if result_type == "void"
                    else self.element(
                        "returnval", result_type, bool(result_flags & VmomiSupport.F_OPTIONAL)
                    )
                )
            except _Unknown as exc:
                self.skipped[wsdl] = str(exc.args[0])
                continue
            base = wsdl.removesuffix("_Task")
            request = (base if base not in request_types else wsdl) + "RequestType"
            request_types.add(request.removesuffix("RequestType"))
            body = ['<element name="_this" type="vim25:ManagedObjectReference" />']
            body += [self.element(p[0], p[1], bool(p[3] & VmomiSupport.F_OPTIONAL)) for p in kept]
            types.append(
                f'<complexType name="{request}"><sequence>{"".join(body)}</sequence></complexType>'
            )
            elements.append(f'<element name="{wsdl}" type="vim25:{request}" />')
            elements.append(
                f'<element name="{wsdl}Response"><complexType><sequence>{returnval}'
                "</sequence></complexType></element>"
            )
            for io, suffix in (("Request", ""), ("Response", "Response")):
                messages.append(
                    f'<message name="{wsdl}{io}Msg"><part name="parameters" '
                    f'element="vim25:{wsdl}{suffix}" /></message>'
                )
            operations.append(
                f'<operation name="{wsdl}"><input message="vim25:{wsdl}RequestMsg" />'
                f'<output message="vim25:{wsdl}ResponseMsg" /></operation>'
            )
            bindings.append(
                f'<operation name="{wsdl}"><soap:operation soapAction={action} />'
                '<input><soap:body use="literal" /></input>'
                '<output><soap:body use="literal" /></output></operation>'
            )
        (out / "vim-messagetypes.xsd").write_text(
            _HEADER
            + _SCHEMA
            + '\n<include schemaLocation="vim-types.xsd" />\n'
            + "\n".join(types)
            + "\n</schema>\n"
        )
        (out / "vim.wsdl").write_text(
            _HEADER
            + f'<definitions targetNamespace="urn:vim25" {_WSDL_NS} xmlns:vim25="urn:vim25" '
            + f"{_XSD}>\n<types>{_SCHEMA}\n"
            + '<include schemaLocation="vim-messagetypes.xsd" />\n'
            + "\n".join(elements)
            + "\n</schema></types>\n"
            + "\n".join(messages)
            + '\n<portType name="VimPortType">\n'
            + "\n".join(operations)
            + '\n</portType>\n<binding name="VimBinding" type="vim25:VimPortType">'
            + '<soap:binding style="document" transport="http://schemas.xmlsoap.org/soap/http" />\n'
            + "\n".join(bindings)
            + "\n</binding>\n</definitions>\n"
        )
        (out / "vimService.wsdl").write_text(
            _HEADER
            + f'<definitions targetNamespace="urn:vimService" {_WSDL_NS} '
            + 'xmlns:interface="urn:vim25">\n'
            + '<import location="vim.wsdl" namespace="urn:vim25" />\n'
            + '<service name="VimService"><port binding="interface:VimBinding" name="VimPort">'
            + '<soap:address location="https://localhost/sdk/vimService" /></port></service>\n'
            + "</definitions>\n"
        )
        return len(operations)

    def _fits(self, param: Any) -> bool:
        try:
            self.xsd_type(param[1])
        except _Unknown:
            if param[3] & VmomiSupport.F_OPTIONAL:
                return False
            raise
        return True


def _key(schemas: Path) -> str:
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(f"{importlib.metadata.version('pyvmomi')}/{TARGET}".encode())
    for name in SCHEMAS:
        digest.update((schemas / name).read_bytes())
    return digest.hexdigest()[:16]


def vim_wsdl(cache: Path | None = None) -> Path:
    """``vimService.wsdl``, generated once per key into the cache; its path.

    Safe for parallel test workers: each generates into a directory of its
    own and renames it into place; the first rename wins.
    """
    schemas = schema_dir()
    base = cache or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    target = base / "vmdk-snap" / f"wsdl-{_key(schemas)}"
    if (target / "vimService.wsdl").exists():
        return target / "vimService.wsdl"
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="wsdl-", dir=target.parent))
    try:
        for name in SCHEMAS:
            (work / name).symlink_to(schemas / name)
        _Generator(schemas, TARGET).write(work)
        try:
            work.rename(target)
        except OSError:
            if not (target / "vimService.wsdl").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target / "vimService.wsdl"


if __name__ == "__main__":
    print(vim_wsdl().as_uri())
    sys.exit(0)
