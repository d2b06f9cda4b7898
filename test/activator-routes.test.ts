// Which function a request at the activator is for: by the Service name it was sent to, or by
// the Ingress rule that sent it (as the ingress controller matched it).
import { describe, expect, it } from 'vitest';
import { type Route, RouteTable } from '../activator/routes.ts';

const route = (namespace: string, name: string, ingress?: { host: string; path: string }): Route => ({
  key: `${namespace}/${name}`,
  namespace,
  name,
  ingress,
});

const table = new RouteTable([
  route('team-a', 'echo', { host: '', path: '/echo' }),
  route('team-b', 'echo', { host: 'b.example.com', path: '/echo' }),
  route('team-a', 'llm', { host: '', path: '/llm' }),
  route('team-a', 'llm-big', { host: '', path: '/llm/big' }),
  route('team-c', 'root', { host: 'root.example.com', path: '/' }),
  route('team-c', 'private'),
]);

describe('RouteTable.resolve', () => {
  it.each([
    ['the Service name with namespace', 'echo.team-b', '/', 'team-b/echo'],
    ['...with .svc', 'echo.team-a.svc', '/x', 'team-a/echo'],
    ['...with the cluster domain and a port', 'echo.team-a.svc.cluster.local:80', '/', 'team-a/echo'],
    ['a function without an Ingress, by its Service', 'private.team-c.svc', '/', 'team-c/private'],
    ['the ingress path, any host', '203.0.113.7', '/echo/stream?n=3', 'team-a/echo'],
    ['the ingress path itself', 'lb.example.com', '/echo', 'team-a/echo'],
    ['a host-specific rule before a hostless one', 'b.example.com', '/echo/x', 'team-b/echo'],
    ['the longest path wins', 'lb', '/llm/big/generate', 'team-a/llm-big'],
    ['a shorter prefix is not a path segment match', 'lb', '/llmx', undefined],
    ['path / on its host', 'root.example.com', '/anything', 'team-c/root'],
    ['path / only on its host', 'other.example.com', '/anything', undefined],
    ['a short Service name that is unambiguous', 'llm', '/', 'team-a/llm'],
    ['a short Service name in two namespaces: not guessed', 'echo', '/', undefined],
    ['nothing matches', 'nowhere.example.com', '/nope', undefined],
  ])('%s: %s %s -> %s', (_what, host, url, expected) => {
    expect(table.resolve(host, url)?.key).toBe(expected);
  });
});
