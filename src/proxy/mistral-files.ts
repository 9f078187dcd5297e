import { pathSegment } from './upstream.js'

/**
 * `/v1/files/{file_id}` (RetrieveFile in mistral-openapi.yaml), read by the proxy (a transcription's file, for its
 * size) and by the batch watcher (a job's files), each through its own pool and with its own handling of the answer.
 */
export function filePath (fileId: string): string {
  return `/v1/files/${pathSegment(fileId)}`
}
