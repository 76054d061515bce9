//! Coalesces concurrent adds to one group into 20-member PATCHes: a burst of tickets for the same group costs one
//! Graph write per 20 members instead of one per member, under the tenant's write budget.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::graph_groups::{GraphGroups, MAX_MEMBERS_PER_PATCH};
use super::{GrantOutcome, ProviderError};

/// How long the first add to a group waits for others to join its batch.
pub const DEFAULT_BATCH_WINDOW: Duration = Duration::from_millis(50);

type Answer = Result<GrantOutcome, ProviderError>;

struct PendingAdd {
    principal_id: String,
    reply: oneshot::Sender<Answer>,
}

/// Each caller of [`GroupAddBatcher::add`] gets its own answer; adds to the same group that arrive within the window
/// (or until 20 wait) go out together through [`GraphGroups::add_many`].
///
/// One task per group id, started by the first add to it and ended when the batcher is dropped: groups come from the
/// policy's allowlist, so there are few.
#[derive(Clone)]
pub struct GroupAddBatcher {
    inner: Arc<Inner>,
}

struct Inner {
    groups: GraphGroups,
    window: Duration,
    queues: Mutex<HashMap<String, mpsc::UnboundedSender<PendingAdd>>>,
}

impl std::fmt::Debug for GroupAddBatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupAddBatcher").field("window", &self.inner.window).finish_non_exhaustive()
    }
}

impl GroupAddBatcher {
    pub fn new(groups: GraphGroups, window: Duration) -> Self {
        GroupAddBatcher { inner: Arc::new(Inner { groups, window, queues: Mutex::new(HashMap::new()) }) }
    }

    /// Adds `principal_id` to the group, in a batch with whatever other adds to that group are waiting.
    /// Must be called within a Tokio runtime.
    pub async fn add(&self, group_id: &str, principal_id: &str) -> Answer {
        let (reply, answer) = oneshot::channel();
        self.enqueue(group_id, PendingAdd { principal_id: principal_id.to_owned(), reply });
        answer.await.unwrap_or_else(|_| {
            Err(ProviderError::Retryable {
                after: None,
                detail: format!("the batch for group {group_id} ended without an answer"),
            })
        })
    }

    fn enqueue(&self, group_id: &str, pending: PendingAdd) {
        let key = group_id.trim().to_ascii_lowercase();
        let mut queues = self.inner.queues.lock().unwrap_or_else(PoisonError::into_inner);
        let pending = match queues.get(&key) {
            Some(queue) => match queue.send(pending) {
                Ok(()) => return,
                // The group's task is gone (it can only end when its queue closes): start another.
                Err(mpsc::error::SendError(pending)) => pending,
            },
            None => pending,
        };
        let (queue, receiver) = mpsc::unbounded_channel();
        // Cannot fail: the receiver is alive. Were it to, the dropped reply answers the caller with a retryable error.
        let _ = queue.send(pending);
        queues.insert(key, queue);
        tokio::spawn(run_group(self.inner.groups.clone(), group_id.to_owned(), self.inner.window, receiver));
    }
}

async fn run_group(
    groups: GraphGroups,
    group_id: String,
    window: Duration,
    mut queue: mpsc::UnboundedReceiver<PendingAdd>,
) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        let deadline = Instant::now() + window;
        while batch.len() < MAX_MEMBERS_PER_PATCH {
            // `timeout_at` polls the queue before it looks at the clock, so adds already waiting always join.
            match tokio::time::timeout_at(deadline, queue.recv()).await {
                Ok(Some(pending)) => batch.push(pending),
                Ok(None) | Err(_) => break,
            }
        }
        let principals: Vec<String> = batch.iter().map(|p| p.principal_id.clone()).collect();
        tracing::debug!(group_id, members = principals.len(), "sending a batch of group adds");
        let answers = groups.add_many(&group_id, &principals).await;
        for (pending, (_, answer)) in batch.into_iter().zip(answers) {
            // The caller may have given up waiting; its answer then has nowhere to go.
            let _ = pending.reply.send(answer);
        }
    }
}
