"""The aceserver model file (`modelfile`): one JSON document, arrays as base64 little-endian with
dtype and shape, a sha256 over the content, units stated. `asi`: pacemaker's active-set inverse
file (`.asi`, one A⁻¹ per element in an `.npz`). `activeset_file`: a model's active-set sidecar
(`<stem>.activeset.npz`: the environments of the active atoms, from which A is recomputed).
`fitstate_file`: a fit's kept least-squares state (`<stem>.fitstate.npz`, for `aceserver fit --update`).
`durable`: files replaced durably (written beside, fsynced, renamed, directory fsynced). The `.yace` format of pacemaker
potentials is `aceserver.pacemaker.yace`; training data (extended XYZ) is read by
`aceserver.fitting.data`."""
