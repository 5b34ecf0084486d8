"""The aceserver model file (`modelfile`): one JSON document, arrays as base64 little-endian with
dtype and shape, a sha256 over the content, units stated. The `.yace` format of pacemaker
potentials is `aceserver.pacemaker.yace`; training data (extended XYZ) is read by
`aceserver.fitting.data`."""
