/**
 * Maps a status (CloudFormation's `CREATE_COMPLETE`…, or a deployment's `deployed`…)
 * to one of a few colour classes: `st-ok` (green), `st-progress` (blue),
 * `st-failed` (red), `st-rollback` (amber), `st-deleted` (grey), `st-unknown`.
 */
export type StatusClass = 'st-ok' | 'st-progress' | 'st-failed' | 'st-rollback' | 'st-deleted' | 'st-unknown';

export function statusClass(status: string | undefined | null): StatusClass {
  const s = (status ?? '').toUpperCase();
  if (s === '') return 'st-unknown';
  if (s.endsWith('_FAILED') || s === 'FAILED' || s === 'ERROR') return 'st-failed';
  if (s.includes('ROLLBACK')) return 'st-rollback';
  if (s.startsWith('DELETE_') || s === 'DELETED' || s === 'CANCELLED') return 'st-deleted';
  if (s.endsWith('_IN_PROGRESS') || s.endsWith('_PENDING')) return 'st-progress';
  if (['DEPLOYING', 'PENDING', 'RUNNING', 'IN_PROGRESS', 'STARTED', 'WAITING', 'QUEUED'].includes(s)) return 'st-progress';
  if (s.endsWith('_COMPLETE') || ['DEPLOYED', 'SUCCESS', 'SUCCEEDED', 'COMPLETE', 'COMPLETED', 'DONE'].includes(s)) return 'st-ok';
  return 'st-unknown';
}
