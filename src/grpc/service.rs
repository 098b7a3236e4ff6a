//! `emailService.EmailService`: each method turns its request into domain input, calls
//! the use case REST calls, and turns the answer (or [`crate::Error`]) into protobuf.

use tonic::{Request, Response, Status};

use crate::{
    api_keys::Client,
    domain::{Email, EmailId, Field, Violation, Violations},
    error::Error,
    usecase::Mailroom,
};

use super::{
    convert,
    pb::{
        CancelReq, CancelRes, CreateBatchReq, CreateBatchRes, CreateReq, CreateRes, GetByIdReq,
        GetByIdRes, ListReq, ListRes, RescheduleReq, RescheduleRes, SearchReq, SearchRes,
        email_service_server::EmailService,
    },
};

pub struct EmailApi {
    mailroom: Mailroom,
}

impl EmailApi {
    pub fn new(mailroom: Mailroom) -> Self {
        EmailApi { mailroom }
    }
}

#[tonic::async_trait]
impl EmailService for EmailApi {
    /// Stores the email synchronously, like `POST /api/v1/email`.
    async fn create(&self, request: Request<CreateReq>) -> Result<Response<CreateRes>, Status> {
        let client = request.extensions().get::<Client>().cloned();
        let draft = convert::draft(request.into_inner(), client.as_ref());
        let created = self.mailroom.create(draft).await?;
        Ok(Response::new(convert::created(created)))
    }

    async fn get_by_id(
        &self,
        request: Request<GetByIdReq>,
    ) -> Result<Response<GetByIdRes>, Status> {
        let id = EmailId::parse(&request.get_ref().email_id, Field::EmailId)
            .map_err(Error::Validation)?;
        let email = self.mailroom.get(id).await?;
        Ok(Response::new(GetByIdRes {
            email: Some(convert::email(Email::clone(&email))),
        }))
    }

    async fn search(&self, request: Request<SearchReq>) -> Result<Response<SearchRes>, Status> {
        let query = convert::search_query(request.get_ref()).map_err(Error::Validation)?;
        let page = self.mailroom.search(query).await?;
        Ok(Response::new(convert::search_res(page)))
    }

    /// Stores several emails in one transaction, like `POST /api/v1/email/batch`.
    async fn create_batch(
        &self,
        request: Request<CreateBatchReq>,
    ) -> Result<Response<CreateBatchRes>, Status> {
        let client = request.extensions().get::<Client>().cloned();
        let request = request.into_inner();
        let key = (!request.idempotency_key.is_empty()).then_some(request.idempotency_key);
        let drafts = request
            .emails
            .into_iter()
            .map(|email| convert::draft(email, None))
            .collect();
        let client = client.as_ref().map_or("", |client| &*client.name);
        let batch = self.mailroom.create_batch(drafts, client, key).await?;
        Ok(Response::new(CreateBatchRes {
            emails: batch.emails.into_iter().map(convert::email).collect(),
            replayed: batch.replayed,
        }))
    }

    async fn list(&self, request: Request<ListReq>) -> Result<Response<ListRes>, Status> {
        let query = convert::list_query(request.get_ref()).map_err(Error::Validation)?;
        let page = self.mailroom.list(query).await?;
        Ok(Response::new(convert::list_res(page)))
    }

    async fn cancel(&self, request: Request<CancelReq>) -> Result<Response<CancelRes>, Status> {
        let id = EmailId::parse(&request.get_ref().email_id, Field::EmailId)
            .map_err(Error::Validation)?;
        let email = self.mailroom.cancel(id).await?;
        Ok(Response::new(CancelRes {
            email: Some(convert::email(email)),
        }))
    }

    async fn reschedule(
        &self,
        request: Request<RescheduleReq>,
    ) -> Result<Response<RescheduleRes>, Status> {
        let id = EmailId::parse(&request.get_ref().email_id, Field::EmailId)
            .map_err(Error::Validation)?;
        let at = convert::reschedule_time(request.get_ref()).ok_or_else(|| {
            Error::Validation(Violations::one(Violation::new(
                Field::ScheduledAt,
                "required",
                "is required",
            )))
        })?;
        let email = self.mailroom.reschedule(id, &at).await?;
        Ok(Response::new(RescheduleRes {
            email: Some(convert::email(email)),
        }))
    }
}
