//! `emailService.EmailService`: each method turns its request into domain input, calls
//! the use case REST calls, and turns the answer (or [`crate::Error`]) into protobuf.

use tonic::{Request, Response, Status};

use crate::{
    domain::{Email, EmailId, Field},
    error::Error,
    usecase::Mailroom,
};

use super::{
    convert,
    pb::{
        CreateReq, CreateRes, GetByIdReq, GetByIdRes, SearchReq, SearchRes,
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
        let draft = convert::draft(request.into_inner());
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
}
