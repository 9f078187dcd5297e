import t from 'tap'
import { parseClusterUrl } from '../../src/redis.js'

// REDIS_URL names a Redis Cluster with the `redis-cluster://` scheme (docs/deploy: any masters, comma-separated).

t.test('redis-cluster:// lists seed nodes; credentials and TLS apply to every node', async (t) => {
  t.same(parseClusterUrl('redis-cluster://10.0.0.1:7000,10.0.0.2:7001'), {
    nodes: [{ host: '10.0.0.1', port: 7000 }, { host: '10.0.0.2', port: 7001 }], redisOptions: {}
  })
  t.same(parseClusterUrl('redis-cluster://redis.internal'), { nodes: [{ host: 'redis.internal', port: 6379 }], redisOptions: {} },
    'the port defaults to 6379')
  t.same(parseClusterUrl('redis-cluster://:s%40cret@a:7000/'), {
    nodes: [{ host: 'a', port: 7000 }], redisOptions: { password: 's@cret' }
  }, 'a password alone, percent-decoded')
  t.same(parseClusterUrl('rediss-cluster://gw:pw@a:7000,[::1]:7001'), {
    nodes: [{ host: 'a', port: 7000 }, { host: '::1', port: 7001 }], redisOptions: { username: 'gw', password: 'pw', tls: {} }
  }, 'ACL user, TLS, an IPv6 node')
})

t.test('any other URL is a single Redis; a bad node is an error at start', async (t) => {
  t.equal(parseClusterUrl('redis://127.0.0.1:6379'), undefined)
  t.equal(parseClusterUrl('rediss://user:pw@host:6380/2'), undefined)
  t.throws(() => parseClusterUrl('redis-cluster://a:7000,b:notaport'), /'b:notaport' is not host:port/)
  t.throws(() => parseClusterUrl('redis-cluster://a:70000'), /not host:port/)
})
