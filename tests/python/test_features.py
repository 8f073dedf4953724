"""Optional build features: a build without etcd refuses etcd settings clearly."""

import pytest

from meridian import RPCClient, RPCServer, _native


@pytest.mark.skipif(_native._has_etcd, reason="this build has the etcd feature")
def test_a_build_without_etcd_says_so(tmp_path):
    with pytest.raises(RuntimeError, match="no etcd support.*--features etcd"):
        RPCServer("r", etcd="http://127.0.0.1:2379")
    with pytest.raises(RuntimeError, match="no etcd support"):
        RPCClient("r", etcd=["http://127.0.0.1:2379"])
    regions = tmp_path / "regions.toml"
    regions.write_text('[etcd]\nendpoints = ["http://127.0.0.1:2379"]\n')
    with pytest.raises(RuntimeError, match="no etcd support"):
        RPCClient("r", config=str(regions))
    # Bad endpoints are still a ValueError, as in a build with etcd.
    with pytest.raises(ValueError, match="at least one endpoint"):
        RPCClient("r", etcd=[])

