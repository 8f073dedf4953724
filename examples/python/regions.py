# The classic multi-region RPC script, unchanged but for the import line. Two servers in two
# regions and one client in this process: the client finds them through the in-process
# registry and routes each call to the region that serves its method, over QUIC with TLS.
# Run: python examples/python/regions.py   (after `pip install ./python`)
from meridian import RPCServer, RPCClient

region1 = RPCServer('Region1')
region2 = RPCServer('Region2')
client = RPCClient('Region1')

@region1.RPC
def add(a, b):
    return a + b

@region2.RPC
def subtract(a, b):
    return a - b

print(client.add(10, 5))       # 15
print(client.subtract(10, 5))  # 5
