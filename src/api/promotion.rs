//! `prodgate.v1.PromotionService`: each handler authenticates, validates and
//! converts, calls the use case, and maps the error. Nothing else.

use super::page_token::{self, Kind};
use super::{convert, error};
use crate::auth::principal;
use crate::evidence::Evidence;
use crate::pb;
use crate::pb::promotion_service_server::PromotionService;
use crate::promotions::{HistoryFilter, HistoryQuery, ListFilter, ListQuery, Promotions};
use tonic::{Request, Response, Status};

pub struct PromotionApi {
    promotions: Promotions,
    evidence: Evidence,
}

impl PromotionApi {
    pub fn new(promotions: Promotions, evidence: Evidence) -> Self {
        Self {
            promotions,
            evidence,
        }
    }
}

fn hex_list(hashes: &[[u8; 32]]) -> Vec<String> {
    hashes.iter().map(hex::encode).collect()
}

fn token_error(e: String) -> Status {
    error::invalid_argument("page_token", e)
}

type PromotionStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::Promotion, Status>> + Send>>;
type ReleaseStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::Release, Status>> + Send>>;

#[tonic::async_trait]
impl PromotionService for PromotionApi {
    type WatchPromotionStream = PromotionStream;
    type WatchReleaseStream = ReleaseStream;

    async fn watch_promotion(
        &self,
        req: Request<pb::WatchPromotionRequest>,
    ) -> Result<Response<Self::WatchPromotionStream>, Status> {
        let who = principal(&req)?;
        let id = convert::promotion_id(&req.get_ref().promotion_id)?;
        let changes = self.promotions.watch(&who, id).await?;
        // A stream's call is logged (and counted) when it ends; this line
        // says it is open (a client may restart a server once it shows).
        tracing::info!(promotion = id, "watch opened");
        let stream = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::ReceiverStream::new(changes),
            |change| match change {
                Ok(p) => Ok(convert::promotion(&p)),
                Err(e) => Err(Status::from(e)),
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_deployed(
        &self,
        req: Request<pb::GetDeployedRequest>,
    ) -> Result<Response<pb::Deployed>, Status> {
        principal(&req)?;
        let r = req.into_inner();
        let repository = convert::repository("repository", &r.repository)?;
        if r.environment.is_empty() {
            return Err(error::invalid_argument("environment", "is required"));
        }
        let at = r.at.as_ref().map(|t| convert::time("at", t)).transpose()?;
        let record = self
            .promotions
            .deployed(&repository, &r.environment, at)
            .await?;
        let drifted = record.drifted();
        let e = record.applied;
        // The promotion that moved the tag has ended: reading it changes nothing.
        let release_id = self
            .promotions
            .get(e.event.promotion_id)
            .await
            .ok()
            .and_then(|p| p.release_id);
        Ok(Response::new(pb::Deployed {
            digest: e.event.digest,
            promotion_id: e.event.promotion_id.to_string(),
            since: Some(convert::timestamp(e.time)),
            drifted,
            release_id: release_id.map(|id| id.to_string()).unwrap_or_default(),
        }))
    }

    async fn request_promotion(
        &self,
        req: Request<pb::RequestPromotionRequest>,
    ) -> Result<Response<pb::Promotion>, Status> {
        let who = principal(&req)?;
        let input = convert::request_input(req.into_inner())?;
        let repository = input.repository.to_string();
        let p = self
            .promotions
            .request(who, input)
            .await
            .map_err(|e| error::status(e, &repository))?;
        Ok(Response::new(convert::promotion(&p)))
    }

    async fn request_release(
        &self,
        req: Request<pb::RequestReleaseRequest>,
    ) -> Result<Response<pb::Release>, Status> {
        let who = principal(&req)?;
        let input = convert::release_input(req.into_inner())?;
        let r = self.promotions.request_release(who, input).await?;
        Ok(Response::new(convert::release(&r)))
    }

    async fn get_release(
        &self,
        req: Request<pb::GetReleaseRequest>,
    ) -> Result<Response<pb::Release>, Status> {
        principal(&req)?;
        let id = convert::promotion_id_field("release_id", &req.get_ref().release_id)?;
        let r = self.promotions.release(id).await?;
        Ok(Response::new(convert::release(&r)))
    }

    async fn list_releases(
        &self,
        req: Request<pb::ListReleasesRequest>,
    ) -> Result<Response<pb::ListReleasesResponse>, Status> {
        principal(&req)?;
        let r = req.into_inner();
        let environment = convert::name_filter("environment", &r.environment)?;
        let state = convert::state_filter(r.state)?;
        let limit = convert::page_size(r.page_size)?;
        // "releases" first: a ListPromotions token never continues this.
        let state_text = r.state.to_string();
        let fp = page_token::fingerprint(&["releases", r.environment.as_str(), &state_text]);
        let after = page_token::decode(&r.page_token, Kind::Promotions, fp).map_err(token_error)?;
        let (releases, next) = self
            .promotions
            .list_releases(environment, state, after, limit)
            .await?;
        Ok(Response::new(pb::ListReleasesResponse {
            releases: releases.iter().map(convert::release).collect(),
            next_page_token: next
                .map(|n| page_token::encode(Kind::Promotions, fp, n))
                .unwrap_or_default(),
        }))
    }

    async fn watch_release(
        &self,
        req: Request<pb::WatchReleaseRequest>,
    ) -> Result<Response<Self::WatchReleaseStream>, Status> {
        let who = principal(&req)?;
        let id = convert::promotion_id_field("release_id", &req.get_ref().release_id)?;
        let changes = self.promotions.watch_release(&who, id).await?;
        tracing::info!(release = id, "release watch opened");
        let stream = tokio_stream::StreamExt::map(
            tokio_stream::wrappers::ReceiverStream::new(changes),
            |change| match change {
                Ok(r) => Ok(convert::release(&r)),
                Err(e) => Err(Status::from(e)),
            },
        );
        Ok(Response::new(Box::pin(stream)))
    }

    async fn approve(
        &self,
        req: Request<pb::ApproveRequest>,
    ) -> Result<Response<pb::Promotion>, Status> {
        let who = principal(&req)?;
        let r = req.into_inner();
        let id = convert::promotion_id(&r.promotion_id)?;
        let comment = convert::text("comment", &r.comment)?;
        let p = self
            .promotions
            .approve(who, id, comment, r.break_glass)
            .await
            .map_err(|e| error::status(e, &id.to_string()))?;
        Ok(Response::new(convert::promotion(&p)))
    }

    async fn reject(
        &self,
        req: Request<pb::RejectRequest>,
    ) -> Result<Response<pb::Promotion>, Status> {
        let who = principal(&req)?;
        let r = req.into_inner();
        let id = convert::promotion_id(&r.promotion_id)?;
        let comment = convert::text("comment", &r.comment)?;
        let p = self.promotions.reject(who, id, comment).await?;
        Ok(Response::new(convert::promotion(&p)))
    }

    async fn cancel(
        &self,
        req: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::Promotion>, Status> {
        let who = principal(&req)?;
        let r = req.into_inner();
        let id = convert::promotion_id(&r.promotion_id)?;
        let comment = convert::text("comment", &r.comment)?;
        let p = self.promotions.cancel(who, id, comment).await?;
        Ok(Response::new(convert::promotion(&p)))
    }

    async fn get_promotion(
        &self,
        req: Request<pb::GetPromotionRequest>,
    ) -> Result<Response<pb::Promotion>, Status> {
        principal(&req)?;
        let id = convert::promotion_id(&req.get_ref().promotion_id)?;
        let p = self.promotions.get(id).await?;
        Ok(Response::new(convert::promotion(&p)))
    }

    async fn list_promotions(
        &self,
        req: Request<pb::ListPromotionsRequest>,
    ) -> Result<Response<pb::ListPromotionsResponse>, Status> {
        let who = principal(&req)?;
        let r = req.into_inner();
        let filter = ListFilter {
            repository: convert::repository_filter(&r.repository)?,
            environment: convert::name_filter("environment", &r.environment)?,
            state: convert::state_filter(r.state)?,
        };
        let limit = convert::page_size(r.page_size)?;
        let request_id = convert::request_id_filter(&r.request_id)?;
        let (state, newest_first, awaiting_me) = (
            r.state.to_string(),
            r.newest_first.to_string(),
            r.awaiting_me.to_string(),
        );
        let mut parts = vec![
            r.repository.as_str(),
            r.environment.as_str(),
            &state,
            &newest_first,
            &awaiting_me,
        ];
        // Only when given, so tokens of listings without it stay valid.
        if !r.project.is_empty() {
            parts.push(&r.project);
        }
        let fp = page_token::fingerprint(&parts);
        let after = page_token::decode(&r.page_token, Kind::Promotions, fp).map_err(token_error)?;
        let listing = self
            .promotions
            .list(ListQuery {
                filter,
                after,
                limit,
                newest_first: r.newest_first,
                request: request_id.map(|key| (who.name.clone(), key)),
                awaiting: r.awaiting_me.then_some(who),
                project: convert::optional(&r.project),
            })
            .await?;
        let next_page_token = listing
            .next
            .map(|n| page_token::encode(Kind::Promotions, fp, n))
            .unwrap_or_default();
        Ok(Response::new(pb::ListPromotionsResponse {
            promotions: listing.items.iter().map(convert::promotion).collect(),
            next_page_token,
        }))
    }

    async fn history(
        &self,
        req: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        principal(&req)?;
        let r = req.into_inner();
        let filter = HistoryFilter {
            repository: convert::repository_filter(&r.repository)?,
            environment: convert::name_filter("environment", &r.environment)?,
            promotion_id: convert::optional(&r.promotion_id)
                .map(|id| convert::promotion_id(&id))
                .transpose()?,
            since: r
                .since
                .as_ref()
                .map(|t| convert::time("since", t))
                .transpose()?,
            until: r
                .until
                .as_ref()
                .map(|t| convert::time("until", t))
                .transpose()?,
        };
        let limit = convert::page_size(r.page_size)?;
        let fp = page_token::fingerprint(&[
            &r.repository,
            &r.environment,
            &r.promotion_id,
            &format!("{:?}", filter.since),
            &format!("{:?}", filter.until),
            &r.newest_first.to_string(),
        ]);
        let after = page_token::decode(&r.page_token, Kind::History, fp).map_err(token_error)?;
        let listing = self
            .promotions
            .history(HistoryQuery {
                filter,
                after,
                limit,
                newest_first: r.newest_first,
            })
            .await?;
        let next_page_token = listing
            .next
            .map(|n| page_token::encode(Kind::History, fp, n))
            .unwrap_or_default();
        Ok(Response::new(pb::HistoryResponse {
            entries: listing.items.iter().map(convert::audit_entry).collect(),
            next_page_token,
        }))
    }

    async fn report_check(
        &self,
        req: Request<pb::ReportCheckRequest>,
    ) -> Result<Response<pb::CheckResult>, Status> {
        let who = principal(&req)?;
        let input = convert::check_input(req.into_inner())?;
        let report = self.promotions.report_check(who, input).await?;
        Ok(Response::new(convert::check_result(&report)))
    }

    async fn list_checks(
        &self,
        req: Request<pb::ListChecksRequest>,
    ) -> Result<Response<pb::ListChecksResponse>, Status> {
        principal(&req)?;
        let r = req.into_inner();
        let repository = convert::repository("repository", &r.repository)?;
        crate::domain::names::validate_digest(&r.digest)
            .map_err(|e| error::invalid_argument("digest", e.to_string()))?;
        let limit = convert::signed_page_size(r.page_size)?;
        let fp = page_token::fingerprint(&[&r.repository, &r.digest]);
        let after =
            page_token::decode_name(&r.page_token, Kind::Checks, fp).map_err(token_error)?;
        let listing = self
            .promotions
            .list_checks(&repository, &r.digest, after.as_deref(), limit)
            .await?;
        let next_page_token = listing
            .next
            .map(|n| page_token::encode_name(Kind::Checks, fp, &n))
            .unwrap_or_default();
        Ok(Response::new(pb::ListChecksResponse {
            checks: listing.items.iter().map(convert::check_result).collect(),
            next_page_token,
        }))
    }

    async fn get_policy(
        &self,
        req: Request<pb::GetPolicyRequest>,
    ) -> Result<Response<pb::Policy>, Status> {
        principal(&req)?;
        let digest = convert::policy_digest(&req.get_ref().digest)?;
        let p = self.promotions.policy(digest).await?;
        Ok(Response::new(pb::Policy {
            digest: p.digest,
            canonical_json: p.canonical_json,
            first_recorded: Some(convert::timestamp(p.first_recorded)),
        }))
    }

    async fn get_checkpoint(
        &self,
        req: Request<pb::GetCheckpointRequest>,
    ) -> Result<Response<pb::Checkpoint>, Status> {
        principal(&req)?;
        let head = self.evidence.checkpoint().await?;
        Ok(Response::new(pb::Checkpoint {
            size: head.size,
            root_hash: hex::encode(head.root),
            note: head.note,
        }))
    }

    async fn get_inclusion_proof(
        &self,
        req: Request<pb::GetInclusionProofRequest>,
    ) -> Result<Response<pb::InclusionProof>, Status> {
        principal(&req)?;
        let r = req.get_ref();
        let p = self.evidence.inclusion(r.sequence, r.tree_size).await?;
        Ok(Response::new(pb::InclusionProof {
            leaf_index: p.from,
            tree_size: p.tree_size,
            hashes: hex_list(&p.hashes),
        }))
    }

    async fn get_consistency_proof(
        &self,
        req: Request<pb::GetConsistencyProofRequest>,
    ) -> Result<Response<pb::ConsistencyProof>, Status> {
        principal(&req)?;
        let r = req.get_ref();
        let p = self.evidence.consistency(r.from_size, r.to_size).await?;
        Ok(Response::new(pb::ConsistencyProof {
            from_size: p.from,
            to_size: p.tree_size,
            hashes: hex_list(&p.hashes),
        }))
    }

    async fn rollback(
        &self,
        req: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::Promotion>, Status> {
        let who = principal(&req)?;
        let input = convert::rollback_input(req.into_inner())?;
        let repository = input.repository.to_string();
        let p = self
            .promotions
            .rollback(who, input)
            .await
            .map_err(|e| error::status(e, &repository))?;
        Ok(Response::new(convert::promotion(&p)))
    }

    async fn evaluate_gates(
        &self,
        req: Request<pb::EvaluateGatesRequest>,
    ) -> Result<Response<pb::GateReport>, Status> {
        let who = principal(&req)?;
        let e = match convert::gates_query(req.into_inner())? {
            convert::GatesQuery::Promotion(id) => self
                .promotions
                .evaluate_gates(id)
                .await
                .map_err(|e| error::status(e, &id.to_string()))?,
            convert::GatesQuery::DryRun(input) => {
                let repository = input.repository.to_string();
                self.promotions
                    .preview(who, input)
                    .await
                    .map_err(|e| error::status(e, &repository))?
            }
        };
        let report = e.report;
        Ok(Response::new(pb::GateReport {
            project: e.project,
            policy_digest: e.policy_digest,
            ready: report.ready(),
            gates: report
                .gates
                .iter()
                .map(|g| pb::Gate {
                    name: g.name.to_owned(),
                    passed: g.passed,
                    message: g.message.clone(),
                })
                .collect(),
        }))
    }

    async fn verify_audit_log(
        &self,
        req: Request<pb::VerifyAuditLogRequest>,
    ) -> Result<Response<pb::VerifyAuditLogResponse>, Status> {
        principal(&req)?;
        let v = self.promotions.verify().await?;
        Ok(Response::new(pb::VerifyAuditLogResponse {
            ok: v.first_bad_sequence.is_none(),
            entries_checked: v.entries_checked,
            first_bad_sequence: v.first_bad_sequence.unwrap_or(0),
            head_hash: hex::encode(v.head_hash),
            message: v.message,
        }))
    }
}
