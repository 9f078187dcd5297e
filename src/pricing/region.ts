// Mistral bills calls sent to its regional hosts at 1.1× (MISTRAL-NOTES §4, regional-inference). The host is fixed
// per deployment by MISTRAL_BASE_URL; a proxy in front of a regional host is not recognised and is priced as global.
const REGIONAL_HOSTS = new Set(['api.eu.mistral.ai', 'api.us.mistral.ai'])

/** Whether calls to this upstream base URL are billed at the regional multiplier. */
export function isRegionalHost (baseUrl: string): boolean {
  try {
    return REGIONAL_HOSTS.has(new URL(baseUrl).hostname.toLowerCase().replace(/\.$/, ''))
  } catch {
    return false
  }
}
